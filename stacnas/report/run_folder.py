"""What a run folder holds, read back for plots and reports: a search (`stacnas search`), the warm-up and clustering
alone (`stacnas cluster`), a final training (`stacnas train`) or the whole pipeline (`stacnas run`: search/ and
train/ beside each other). A run still going or interrupted is read as far as it got."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import genotypes
from ..errors import UsageError, warn
from ..files import read_text
from ..names import CELL_TYPES
from ..spaces import space_from_dict

SEARCH_STAGES = ("cluster", "stage1", "stage2", "darts")  # in the order a search runs them


def _json(path: Path):
    """A JSON file of the run, or None when it is not there (yet)."""
    if not path.is_file():
        return None
    try:
        return json.loads(read_text(path, "run file"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); was it written by stacnas?") from None


def _metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records; a line torn by an interruption is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in read_text(path, "metrics file").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warn(f"{path}: skipped a line that is not a whole metrics record")
    return records


@dataclass
class RunFolder:
    path: Path
    kind: str  # search, cluster or train
    config: dict
    environment: dict | None
    metrics: list[dict]
    genotype: genotypes.Genotype | None = None
    summary: dict | None = None  # search: summary.json
    result: dict | None = None  # train: result.json
    clusters: dict | None = None  # search, cluster: clusters.json
    stage1_choice: dict | None = None
    spaces: dict = field(default_factory=dict)  # search stage -> {cell type: the ops of each edge}

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return {"search": self.summary, "train": self.result, "cluster": self.clusters}[self.kind] is not None

    def stages(self) -> list[str]:
        """The search stages with metrics, in the order they ran (a training has one unnamed stage: [None])."""
        present = {r.get("stage") for r in self.metrics}
        if self.kind == "train":
            return [None]
        return [s for s in SEARCH_STAGES if s in present]

    def records(self, stage: str | None) -> list[dict]:
        return [r for r in self.metrics if r.get("stage") == stage]

    def stage_seconds(self) -> dict:
        """Wall time of each stage (the sum of its epochs' seconds)."""
        return {stage or "training": round(sum(r["seconds"] for r in self.records(stage)), 1)
                for stage in self.stages()}


def _kind(path: Path, config: dict) -> str:
    """train, search, or cluster: clusters.json written and no stage begun after it (also a search interrupted
    right after its clustering, which holds the same)."""
    if "method" not in config:
        return "train"
    later = any((path / stage).is_dir() for stage in SEARCH_STAGES[1:]) or (path / "summary.json").is_file()
    return "search" if later or not (path / "clusters.json").is_file() else "cluster"


def load_run(path: str | Path) -> RunFolder:
    """One search, cluster or train folder (see load_runs for a pipeline folder)."""
    path = Path(path)
    config = _json(path / "config.json")
    if config is None:
        raise UsageError(f"{path} is not a stacnas run folder (no config.json): give the --out folder of a "
                         "'stacnas search', 'cluster', 'train' or 'run'")
    kind = _kind(path, config)
    genotype_file = path / "genotype.json"
    run = RunFolder(path, kind, config, _json(path / "environment.json"), _metrics(path / "metrics.jsonl"),
                    genotype=genotypes.load(str(genotype_file)) if genotype_file.is_file() else None,
                    summary=_json(path / "summary.json"), result=_json(path / "result.json"),
                    clusters=_json(path / "clusters.json"), stage1_choice=_json(path / "stage1" / "choice.json"))
    for stage in SEARCH_STAGES:
        space = _json(path / stage / "space.json")
        if space is not None:
            space = space_from_dict(space, stage)
            run.spaces[stage] = {t: space.edge_ops(t, config["nodes"]) for t in CELL_TYPES}
    return run


def load_runs(path: str | Path) -> list[RunFolder]:
    """The runs of a folder: itself, or a pipeline's search/ and train/."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run folder {path} does not exist")
    if not (path / "config.json").is_file() and any((path / sub / "config.json").is_file()
                                                   for sub in ("search", "train")):
        return [load_run(path / sub) for sub in ("search", "train") if (path / sub / "config.json").is_file()]
    return [load_run(path)]
