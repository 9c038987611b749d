"""Final training of a found cell, on top of stacnas.runtime (it needs no supernet):

    config   TrainConfig, the options of a training run (DARTS' CIFAR recipe by default)
    network  NetworkCIFAR and NetworkImageNet from a genotype; their parameters and multiply-adds
    trainer  the training run on the shared epoch loop; result.json reports the last epoch
    deploy   a trained model.pt read back, evaluated, exported
"""
from .config import TrainConfig
from .deploy import EXPORT_FORMATS, export, load_trained, run_eval
from .network import NetworkCIFAR, NetworkImageNet, build_network, count_macs, count_parameters_m
from .trainer import architecture, drop_path_at, evaluate, run_train, training_loss

__all__ = ["EXPORT_FORMATS", "NetworkCIFAR", "NetworkImageNet", "TrainConfig", "architecture", "build_network",
           "count_macs", "count_parameters_m", "drop_path_at", "evaluate", "export", "load_trained", "run_eval",
           "run_train", "training_loss"]
