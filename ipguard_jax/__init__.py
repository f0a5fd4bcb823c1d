"""ipguard_jax: fast, batched IPGuard fingerprints of a classifier's decision boundary.

IPGuard (Cao, Jia and Gong, AsiaCCS 2021) protects a trained classifier by finding data points
near its classification boundary; the points and the owner's labels on them are a fingerprint
that pirated copies of the model (fine-tuned, pruned, distilled...) still match and
independently trained models do not.

Data flows one way::

    data -> Classifier -> generate -> Fingerprints -> verify / matching_rate
                                                    -> calibrate -> with_calibration
                                                    -> verify_sequential
                                                    -> save / load

Example:
    >>> import jax.numpy as jnp
    >>> import ipguard_jax as ipg
    >>> w = jnp.array([[1.0, -1.0, 0.5], [-0.5, 1.0, 0.2], [0.3, 0.1, -1.0]])
    >>> owner = ipg.Classifier(lambda p, x: x @ p, w, input_shape=(3,))
    >>> fp = ipg.generate(owner, ipg.FingerprintConfig(num=16, k=0.1, init="noise"), key=0,
    ...                   progress=False)
    >>> ipg.verify(fp, owner).is_copy
    True

The pure functional core (loss, objectives, one step, batched optimiser) lives in
:mod:`ipguard_jax.core` for use inside your own ``jax.jit`` or training loop; the methods
(IPGuard and the baselines, as values) in :mod:`ipguard_jax.methods`.
"""

from ipguard_jax import core as core
from ipguard_jax import engine as engine
from ipguard_jax import methods as methods
from ipguard_jax._version import __version__ as __version__
from ipguard_jax.calibration import Calibration as Calibration
from ipguard_jax.calibration import calibrate as calibrate
from ipguard_jax.calibration import with_calibration as with_calibration
from ipguard_jax.classifier import Classifier as Classifier
from ipguard_jax.classifier import params_hash as params_hash
from ipguard_jax.config import FingerprintConfig as FingerprintConfig
from ipguard_jax.core import ipguard_loss as ipguard_loss
from ipguard_jax.core import optimize_points as optimize_points
from ipguard_jax.fingerprints import Fingerprints as Fingerprints
from ipguard_jax.fingerprints import commit as commit
from ipguard_jax.fingerprints import new_nonce as new_nonce
from ipguard_jax.fingerprints import verify_commitment as verify_commitment
from ipguard_jax.generation import ConvergenceWarning as ConvergenceWarning
from ipguard_jax.generation import generate as generate
from ipguard_jax.generation import suggest_k as suggest_k
from ipguard_jax.io import FingerprintFileError as FingerprintFileError
from ipguard_jax.io import load as load
from ipguard_jax.io import save as save
from ipguard_jax.io import seal as seal
from ipguard_jax.io import unseal as unseal
from ipguard_jax.sequential import SequentialVerdict as SequentialVerdict
from ipguard_jax.sequential import verify_sequential as verify_sequential
from ipguard_jax.adapters.http import HTTPSuspect as HTTPSuspect
from ipguard_jax.adapters.http import QueryBudgetExceeded as QueryBudgetExceeded
from ipguard_jax.adapters.http import SuspectQueryError as SuspectQueryError
from ipguard_jax.verification import Verdict as Verdict
from ipguard_jax.verification import matching_rate as matching_rate
from ipguard_jax.verification import query_labels as query_labels
from ipguard_jax.verification import verify as verify
