"""paraplan executor: runs a Plan with torch.distributed and measures it (see README)."""

import warnings

# torch 2.13 marks all_gather_into_tensor / reduce_scatter_tensor deprecated in favour of the
# *_single calls, which torch 2.6 (our lowest supported) lacks; keep the calls and spare users
# one warning per call.
warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).* "
                        r"is deprecated", category=FutureWarning)
