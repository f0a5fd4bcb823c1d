"""Verification: matching rates, black-box suspects, verdicts and the binomial test."""

import numpy as np
import pytest
from scipy import stats

import ipguard_jax as ipg
from ipguard_jax.verification import binomial_sf


def test_owner_matches_itself_and_an_independent_model_matches_less(
        owner, independent, owner_fingerprints):
    own = ipg.matching_rate(owner_fingerprints, owner)
    other = ipg.matching_rate(owner_fingerprints, independent)
    assert own == 1.0
    assert other < 0.6, other  # measured ~0.3 at k=3
    assert own - other > 0.4


def test_black_box_suspects_logits_and_labels(owner, owner_fingerprints):
    calls = []

    def logits_api(x):
        calls.append(len(x))
        return np.asarray(owner(x))

    def labels_api(x):
        return owner.predict(x)

    assert ipg.matching_rate(owner_fingerprints, logits_api, batch_size=32) == 1.0
    assert calls == [32, 32, 32, 4]  # queried in batches
    assert ipg.matching_rate(owner_fingerprints, labels_api) == 1.0


def test_verdict_and_p_value(owner, independent, owner_fingerprints):
    verdict = ipg.verify(owner_fingerprints, owner, threshold=0.5, null_rate=0.3)
    assert verdict.is_copy and verdict.num_points == 100 and verdict.num_matches == 100
    assert verdict.p_value == pytest.approx(0.3 ** 100, rel=1e-9)
    other = ipg.verify(owner_fingerprints, independent, threshold=0.5, null_rate=0.3)
    assert not other.is_copy and other.p_value > 1e-3
    assert "COPY" in str(verdict) and "not a copy" in str(other)
    assert ipg.verify(owner_fingerprints, owner).p_value is None


@pytest.mark.parametrize("k, n, p", [(0, 10, 0.5), (7, 10, 0.5), (60, 100, 0.35), (3, 1000, 0.001),
                                     (900, 1000, 0.8), (10, 10, 0.99)])
def test_binomial_sf_equals_scipy(k, n, p):
    expected = stats.binomtest(k, n, p, alternative="greater").pvalue
    assert binomial_sf(k, n, p) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_bad_suspects_are_rejected(owner_fingerprints, owner):
    x = owner_fingerprints.x
    cases = [
        (lambda b: np.zeros((len(b), 7)), ValueError, "returns 7 classes"),
        (lambda b: np.full(len(b), 12), ValueError, r"labels outside \[0, 10\)"),
        (lambda b: np.zeros(len(b), np.float32), TypeError, "integer labels"),
        (lambda b: np.zeros((3,), int), ValueError, "returned 3 labels"),
        (lambda b: np.zeros((len(b), 2, 5)), ValueError, "must return labels"),
    ]
    for suspect, error, match in cases:
        with pytest.raises(error, match=match):
            ipg.matching_rate(owner_fingerprints, suspect)
    with pytest.raises(TypeError, match="callable"):
        ipg.matching_rate(owner_fingerprints, "http://example")
    wrong_shape = ipg.Classifier(lambda p, b: b.reshape(len(b), -1)[:, :10], None, (4, 4, 4))
    with pytest.raises(ValueError, match="inputs of shape"):
        ipg.matching_rate(owner_fingerprints, wrong_shape)
    three = ipg.Classifier(lambda p, b: b.reshape(len(b), -1)[:, :3], None, (8, 8, 1))
    with pytest.raises(ValueError, match="3 classes"):
        ipg.matching_rate(owner_fingerprints, three)
    with pytest.raises(ValueError, match="threshold"):
        ipg.verify(owner_fingerprints, owner, threshold=1.5)
    with pytest.raises(ValueError, match="null_rate"):
        ipg.verify(owner_fingerprints, owner, null_rate=-0.1)
    with pytest.raises(ValueError, match="batch_size"):
        ipg.matching_rate(owner_fingerprints, owner, batch_size=0)
    assert x.shape == (100, 8, 8, 1)


def test_fingerprints_container_checks(owner_fingerprints):
    arrays = owner_fingerprints.arrays()
    with pytest.raises(ValueError, match="share their length"):
        ipg.Fingerprints(**{**arrays, "labels": arrays["labels"][:5]})
    with pytest.raises(ValueError, match="must be 1-D"):
        ipg.Fingerprints(**{**arrays, "loss": arrays["loss"][:, None]})
    with pytest.raises(IndexError, match="slice, an index array or a mask"):
        owner_fingerprints[3]
    subset = owner_fingerprints[owner_fingerprints.labels == owner_fingerprints.labels[0]]
    assert 0 < len(subset) < 100 and subset.metadata == owner_fingerprints.metadata
    assert not owner_fingerprints.x.flags.writeable  # evidence is read-only
    with pytest.raises(TypeError, match="must be Fingerprints"):
        ipg.matching_rate(arrays, lambda b: np.zeros(len(b), int))
    with pytest.raises(ValueError, match="returned 3 rows"):
        ipg.matching_rate(owner_fingerprints, lambda b: np.zeros((3, 10)))


def test_any_suspect_offering_url_batch_size_and_bind_is_treated_like_an_http_suspect(
        owner, owner_fingerprints):
    """The query functions rely on a protocol (verification.RemoteSuspect), not on the class
    HTTPSuspect: another class with the same attributes is bound to the run, has its decoy
    batches cut to its batch_size and is recorded by its redacted URL."""
    from ipguard_jax.calibration import calibrate
    from ipguard_jax.verification import RemoteSuspect

    class Endpoint:
        url = "https://user:secret@api.example/v1?key=abc"
        batch_size = 16

        def __init__(self):
            self.contexts, self.batches = [], []

        def bind(self, context, *, num_classes=None):
            self.contexts.append((dict(context), num_classes))

        def __call__(self, x):
            self.batches.append(len(x))
            return owner.predict(x)

    endpoint = Endpoint()
    assert isinstance(endpoint, RemoteSuspect)
    decoys = owner_fingerprints.x[:50] * 0.5
    assert ipg.matching_rate(owner_fingerprints, endpoint, batch_size=64, decoys=decoys,
                             decoy_ratio=0.5, key=0) == 1.0
    assert max(endpoint.batches) <= 16 and sum(endpoint.batches) == 150
    (context, num_classes), = endpoint.contexts
    assert num_classes == 10 and set(context) == {"fingerprints", "decoys"}
    assert context["decoys"]["ratio"] == 0.5

    plain = []  # a plain callable is only called, as before
    assert ipg.matching_rate(owner_fingerprints, lambda x: plain.append(len(x)) or
                             owner.predict(x), batch_size=64) == 1.0
    assert plain == [64, 36]

    references = [endpoint] + [owner.predict(owner_fingerprints.x)] * 4
    descriptions = calibrate(owner_fingerprints, references).descriptions
    assert descriptions[0] == "HTTP endpoint https://***@api.example/v1?***"
