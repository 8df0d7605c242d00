"""PRUNE after the fact: compare an edited model's weights with the original's and restrain every changed matrix.

Pure tensor code on ``{name: tensor}`` mappings (no loading, no files): the edit can come from any tool
(EasyEdit, a fine-tune, this project without restraint). For each matrix, ΔW = W_edited − W_0 is restrained
exactly as `prune_lit.callbacks.SpectralRestraint` does inside the editing loop when it runs once at the end
(``at_end_only``): `restrain_delta_with_stats` with σ_max(W_0) from `spectral_norm`, and the correction is
added to W_edited (what lies below σ_max(W_0) keeps its exact bits).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from prune_lit.restraint.norms import spectral_norm
from prune_lit.restraint.prune import restrain_delta_with_stats
from prune_lit.restraint.spectrum import RestraintMode, check_restraint_args, is_contraction

log = logging.getLogger(__name__)


class PosthocError(ValueError):
    """Input that post-hoc restraint refuses (the command line reports it as one ``error:`` line)."""


class CheckpointMismatchError(PosthocError):
    """The two weight sets are not of the same architecture (other parameter names or shapes)."""


class NothingChangedError(PosthocError):
    """No matrix differs between the original and the edited weights."""


@dataclass
class MatrixRestraint:
    """What PRUNE did (or would do) to one ``[m, n]`` matrix."""

    name: str
    shape: tuple[int, int]
    sigma_max_w0: float  # σ_max(W_0)
    sigma_max_delta: float  # σ_max(ΔW) before restraint (exact)
    sigma_max_delta_after: float  # σ_max(ΔW') after restraint
    n_restrained: int  # singular values of ΔW above σ_max(W_0), mapped by PRUNE
    fro_delta: float  # ‖ΔW‖_F before restraint

    @property
    def ratio_before(self) -> float:
        """σ_max(ΔW) / σ_max(W_0) before restraint."""
        return self.sigma_max_delta / self.sigma_max_w0

    @property
    def ratio_after(self) -> float:
        """σ_max(ΔW') / σ_max(W_0) after restraint (≤ 1 + log_α(ratio_before) / σ_max(W_0) in log mode)."""
        return self.sigma_max_delta_after / self.sigma_max_w0


@dataclass
class PosthocRestraint:
    """The spectral report of every compared matrix and, for the restrained ones, their new weights."""

    matrices: list[MatrixRestraint]
    alpha: float
    mode: str
    n_parameters: int  # how many parameter tensors were compared
    weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # name -> restrained W (float32)

    @property
    def n_restrained(self) -> int:
        """How many matrices PRUNE changes."""
        return sum(1 for m in self.matrices if m.n_restrained)

    def table(self) -> str:
        """The report as text: one line per matrix, σ_max(ΔW)/σ_max(W₀) before and after."""
        rows = [("matrix", "shape", "σ_max(W₀)", "‖ΔW‖_F", "σ_max(ΔW)/σ_max(W₀)", "after PRUNE", "σ restrained")]
        for m in self.matrices:
            rows.append((m.name, f"{m.shape[0]}x{m.shape[1]}", f"{m.sigma_max_w0:.4g}", f"{m.fro_delta:.4g}",
                         f"{m.ratio_before:.4f}", f"{m.ratio_after:.4f}", str(m.n_restrained)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        label = "α = e" if self.alpha == math.e else f"α = {self.alpha:g}"
        n = len(self.matrices)
        head = (f"PRUNE ({self.mode}, {label}): {n} changed {'matrix' if n == 1 else 'matrices'} of {self.n_parameters} parameters, "
                f"{self.n_restrained} with σ(ΔW) above σ_max(W₀)")
        return "\n".join([head, *lines])


def check_same_architecture(original: Mapping[str, torch.Tensor], edited: Mapping[str, torch.Tensor]) -> None:
    """Raise `CheckpointMismatchError` unless both hold the same parameter names with the same shapes."""
    only_original = sorted(set(original) - set(edited))
    only_edited = sorted(set(edited) - set(original))
    if only_original or only_edited:
        raise CheckpointMismatchError(
            f"different architectures: {len(only_original)} parameters only in the original (e.g. {only_original[:2]}), "
            f"{len(only_edited)} only in the edited model (e.g. {only_edited[:2]})"
        )
    shapes = [(n, tuple(original[n].shape), tuple(edited[n].shape)) for n in original if original[n].shape != edited[n].shape]
    if shapes:
        n, a, b = shapes[0]
        raise CheckpointMismatchError(f"different shapes: {len(shapes)} parameters differ, e.g. {n} is {list(a)} in the original and {list(b)} in the edited model")


def resolve_matrix_names(params: Mapping[str, torch.Tensor], names: Sequence[str]) -> list[str]:
    """Full parameter names for ``names``; each may be the full name, the name without ``.weight``, or that
    without the ``model.`` / ``transformer.`` prefix (``layers.4.mlp.down_proj``). Unknown or non-2-D names raise `PosthocError`."""
    out: list[str] = []
    for given in names:
        candidates = [given, given + ".weight", *(p + given + s for p in ("model.", "transformer.") for s in ("", ".weight"))]
        found = next((c for c in candidates if c in params), None)
        if found is None:
            raise PosthocError(f"matrices: no parameter {given!r} in the model (e.g. {next(iter(params), '')!r})")
        if params[found].dim() != 2:
            raise PosthocError(f"matrices: {found} is not a matrix (shape {list(params[found].shape)})")
        if found not in out:
            out.append(found)
    return out


def changed_matrices(original: Mapping[str, torch.Tensor], edited: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the 2-D floating-point parameters whose values differ (bit for bit), in ``edited``'s order.

    Changed parameters that are not matrices (norm gains, biases) are logged: PRUNE leaves them as edited.
    """
    check_same_architecture(original, edited)
    out, other = [], []
    for name, w in edited.items():
        if not w.is_floating_point() or torch.equal(w, original[name].to(w.device, w.dtype)):
            continue
        (out if w.dim() == 2 else other).append(name)
    if other:
        log.warning("%d changed parameters are not matrices and are kept as edited: %s", len(other), other[:5])
    return out


@torch.no_grad()
def restrain_weights(
    original: Mapping[str, torch.Tensor],
    edited: Mapping[str, torch.Tensor],
    names: Sequence[str] | None = None,
    alpha: float = math.e,
    mode: RestraintMode = "log",
) -> PosthocRestraint:
    """PRUNE every changed matrix of ``edited`` (or the ``names`` given) against ``original``.

    Args:
        original: ``{name: W_0}`` of the unedited model (any float dtype; math in float32).
        edited: ``{name: W}`` of the edited model, same names and shapes.
        names: restrict to these matrices (full names or short forms, see `resolve_matrix_names`); None = every
            matrix that changed.
        alpha, mode: as `restrain_delta_with_stats`.

    Returns:
        The report of every matrix considered and ``weights``: the restrained ``[m, n]`` float32 W of each
        matrix PRUNE changes (W_edited + U_r (s' − s) V_rᵀ; matrices with nothing above σ_max(W_0) are absent).

    Raises:
        CheckpointMismatchError: other parameter names or shapes.
        NothingChangedError: none of the considered matrices differs.
        PosthocError: an unknown or non-matrix name; NaN or Inf in a ΔW ; a bad ``alpha`` / ``mode``.
    """
    try:
        check_restraint_args(1.0, alpha, mode)
    except ValueError as err:
        raise PosthocError(str(err)) from err
    check_same_architecture(original, edited)
    considered = changed_matrices(original, edited) if names is None else resolve_matrix_names(edited, names)
    considered = [n for n in considered if not torch.equal(edited[n], original[n].to(edited[n].device, edited[n].dtype))]
    if not considered:
        what = "of the named matrices" if names is not None else "matrix"
        raise NothingChangedError(f"nothing changed: no {what} differs between the original and the edited model")
    report = PosthocRestraint(matrices=[], alpha=float(alpha), mode=mode, n_parameters=len(edited))
    for name in considered:
        w = edited[name].float()
        w0 = original[name].to(w.device, torch.float32)
        delta = w - w0
        try:
            sigma_max = spectral_norm(w0)
            if not is_contraction(sigma_max, alpha, mode):
                log.warning("%s: σ_max(W_0) = %.3g < 1/ln(α): the log map enlarges singular values just above it (as the reference code)", name, sigma_max)
            res = restrain_delta_with_stats(delta, sigma_max, alpha, mode)
            before = spectral_norm(delta)
        except ValueError as err:
            raise PosthocError(f"restraint of {name}: {err}") from err
        after = float(res.sigma_max_after) if res.n_restrained and res.sigma_max_after is not None else before
        report.matrices.append(MatrixRestraint(name, (w.shape[0], w.shape[1]), sigma_max, before, after, res.n_restrained, res.frobenius))
        if res.n_restrained:
            report.weights[name] = res.apply_(w.clone() if w is edited[name] else w)
    return report
