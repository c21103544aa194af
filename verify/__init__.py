"""relu-verify: prove or refute the robustness of ReLU networks."""

from .errors import DataError, ModelError, SpecError, VerifyError
from .network import (
    Add,
    AvgPool2d,
    ChannelAffine,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    Network,
    Node,
    ReLU,
    Residual,
    same_padding,
)
from .runtime import keep_freed_memory
from .spec import LpBall, check_counterexample

keep_freed_memory()  # large temporaries reuse freed heap memory (verify/runtime.py; RELU_VERIFY_MALLOPT=0: off)

__version__ = "0.1.0"

__all__ = [
    "Add", "AvgPool2d", "ChannelAffine", "Conv2d", "DataError", "Flatten", "Layer", "Linear", "LpBall",
    "MaxPool2d", "ModelError", "Network", "Node", "ReLU", "Residual", "SpecError", "VerifyError",
    "check_counterexample", "same_padding", "__version__",
]
