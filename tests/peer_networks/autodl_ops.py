"""The candidates of AutoDL-Projects' cell_operations.py (xautodl/models): convs with a bias when not affine,
DualSepConv as two SepConv halves, pools without BatchNorm (POOLING), Zero(C_in, C_out, stride), FactorizedReduce
with its convs in a ModuleList and a pad."""
import torch
import torch.nn as nn


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine, track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=not affine),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine, track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=not affine),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats))

    def forward(self, x):
        return self.op(x)


class DualSepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine, track_running_stats=True):
        super().__init__()
        self.op_a = SepConv(C_in, C_in, kernel_size, stride, padding, dilation, affine, track_running_stats)
        self.op_b = SepConv(C_in, C_out, kernel_size, 1, padding, dilation, affine, track_running_stats)

    def forward(self, x):
        return self.op_b(self.op_a(x))


class POOLING(nn.Module):
    def __init__(self, C_in, C_out, stride, mode, affine=True, track_running_stats=True):
        super().__init__()
        self.preprocess = None if C_in == C_out else ReLUConvBN(C_in, C_out, 1, 1, 0, 1, affine, track_running_stats)
        self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False) if mode == "avg" else \
            nn.MaxPool2d(3, stride=stride, padding=1)

    def forward(self, inputs):
        return self.op(self.preprocess(inputs) if self.preprocess else inputs)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, C_in, C_out, stride):
        super().__init__()
        self.C_in, self.C_out, self.stride = C_in, C_out, stride
        self.is_zero = True

    def forward(self, x):
        if self.C_in == self.C_out:
            return x.mul(0.) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.)
        shape = list(x.shape)
        shape[1] = self.C_out
        return x.new_zeros(shape)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out, stride, affine, track_running_stats):
        super().__init__()
        self.stride, self.C_in, self.C_out = stride, C_in, C_out
        self.relu = nn.ReLU(inplace=False)
        if stride == 2:
            halves = [C_out // 2, C_out - C_out // 2]
            self.convs = nn.ModuleList(nn.Conv2d(C_in, h, 1, stride=2, padding=0, bias=not affine) for h in halves)
            self.pad = nn.ConstantPad2d((0, 1, 0, 1), 0)
        else:
            self.conv = nn.Conv2d(C_in, C_out, 1, stride=stride, padding=0, bias=not affine)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x):
        if self.stride == 2:
            x = self.relu(x)
            y = self.pad(x)
            out = torch.cat([self.convs[0](x), self.convs[1](y[:, :, 1:, 1:])], dim=1)
        else:
            out = self.conv(x)
        return self.bn(out)


def _conv(kernel, padding, dilation, cls=ReLUConvBN):
    return lambda C_in, C_out, stride, affine, track: cls(C_in, C_out, kernel, stride, padding, dilation, affine,
                                                          track)


OPS = {
    "none": lambda C_in, C_out, stride, affine, track: Zero(C_in, C_out, stride),
    "avg_pool_3x3": lambda C_in, C_out, stride, affine, track: POOLING(C_in, C_out, stride, "avg", affine, track),
    "max_pool_3x3": lambda C_in, C_out, stride, affine, track: POOLING(C_in, C_out, stride, "max", affine, track),
    "nor_conv_3x3": _conv(3, 1, 1),
    "nor_conv_1x1": _conv(1, 0, 1),
    "dua_sepc_3x3": _conv(3, 1, 1, DualSepConv),
    "dua_sepc_5x5": _conv(5, 2, 1, DualSepConv),
    "dil_sepc_3x3": _conv(3, 2, 2, SepConv),
    "dil_sepc_5x5": _conv(5, 4, 2, SepConv),
    "skip_connect": lambda C_in, C_out, stride, affine, track: Identity() if stride == 1 and C_in == C_out else
    FactorizedReduce(C_in, C_out, stride, affine, track),
}

NAS_BENCH_201 = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
DARTS_SPACE = ["none", "skip_connect", "dua_sepc_3x3", "dua_sepc_5x5", "dil_sepc_3x3", "dil_sepc_5x5",
               "avg_pool_3x3", "max_pool_3x3"]
