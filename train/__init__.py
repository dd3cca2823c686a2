"""Training: fastai and mmsegmentation trainers that write self-describing checkpoint folders."""

import warnings

# fastai.layers scripts a helper at import, and torch 2.14 marks torch.jit.script deprecated: one FutureWarning on
# every trainer start and every --help, which says nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning,
                        module=r"torch\.jit\._script")
