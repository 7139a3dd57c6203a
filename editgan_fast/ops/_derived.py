"""Values derived from frozen tensors, cached by the tensors' identities: what the GPU backends build once per
weight (packed weights, filters, packed ensembles) so that a warm call allocates and synchronizes nothing."""
import weakref


def version(t):
    """The tensor's version counter (it moves on every in-place change); -1 for an inference tensor."""
    try:
        return t._version
    except RuntimeError:  # an inference tensor has no version counter (and cannot be modified outside one)
        return -1


class DerivedCache:
    """Values derived from frozen tensors (weights, filters, ensemble members, masks), built once per tensor
    set and `extra` (shapes, dtypes, flags): keyed by the tensors' identities and `extra`, rebuilt when one
    tensor is modified in place (its version counter moves), dropped when one is freed. Every `extra` of a tensor
    set keeps its own value: replacing one (an eager call in another dtype) would free memory that a captured
    CUDA graph of the first still reads (editor/graphs.py)."""

    def __init__(self):
        self._entries = {}

    def get(self, tensors, extra, build):
        key = (tuple(id(t) for t in tensors), extra)
        versions = tuple(version(t) for t in tensors)
        hit = self._entries.get(key)
        if hit is not None and hit[1] == versions and all(ref() is t for ref, t in zip(hit[0], tensors)):
            return hit[2]
        value = build()
        refs = tuple(weakref.ref(t, lambda _, k=key: self._entries.pop(k, None)) for t in tensors)
        self._entries[key] = (refs, versions, value)
        return value


def member_tensors(members):
    """Every tensor of a seg-head ensemble: the key of what is derived from the members."""
    return tuple(t for m in members for field in (m.weights, m.biases, m.bn_mean, m.bn_var, m.bn_weight, m.bn_bias)
                 for t in field)
