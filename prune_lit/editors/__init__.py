from prune_lit.editors.alphaedit import AlphaEditEditor, AlphaEditHParams, alphaedit_update, null_space_projector  # noqa: F401
from prune_lit.editors.base import Editor, EditResult, EditStats, apply_deltas  # noqa: F401
from prune_lit.editors.hparams import MEMITHParams, ROMEHParams  # noqa: F401
from prune_lit.editors.locate_edit import LocateEditEditor  # noqa: F401
from prune_lit.editors.memit import MEMITEditor, memit_update  # noqa: F401
from prune_lit.editors.mend import MENDCheckpointError, MENDEditor, load_mend_checkpoint  # noqa: F401
from prune_lit.editors.mend_net import GradientTransform, IDMLP, MENDHyperNet  # noqa: F401
from prune_lit.editors.rome import ROMEEditor, rome_update  # noqa: F401
