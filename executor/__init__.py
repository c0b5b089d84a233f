"""paraplan executor: runs a Plan with torch.distributed and measures it (see README)."""

import warnings

# torch 2.13 marks reduce_scatter_tensor deprecated in favour of reduce_scatter_single, which
# torch 2.6 (our lowest supported) lacks; keep the call and spare users one warning per call.
warnings.filterwarnings("ignore", message=r".*reduce_scatter_tensor.* is deprecated",
                        category=FutureWarning)
