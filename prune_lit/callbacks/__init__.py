from prune_lit.contracts import EditStepCallback, MatrixContext, Phase, Restraint, edit_step_callbacks  # noqa: F401
from prune_lit.callbacks.diagnostics import SpectralDiagnostics  # noqa: F401
from prune_lit.callbacks.restraint import SpectralRestraint  # noqa: F401
from prune_lit.callbacks.factored_restraint import FactoredSpectralRestraint  # noqa: F401
from prune_lit.callbacks.sphere_restraint import SphereRestraint  # noqa: F401
from prune_lit.callbacks.key_aware_restraint import KeyAwareSpectralRestraint  # noqa: F401
