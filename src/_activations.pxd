# Numerically safe activations, inlined into the kernels.
from libc.math cimport exp, expf, tanh, tanhf
from cython cimport floating


cdef inline floating sigmoid(floating x) noexcept nogil:
    """Logistic function without overflow: exp is only taken of -|x|."""
    cdef floating z
    if floating is float:
        if x >= 0:
            return 1.0 / (1.0 + expf(-x))
        z = expf(x)
        return z / (1.0 + z)
    else:
        if x >= 0:
            return 1.0 / (1.0 + exp(-x))
        z = exp(x)
        return z / (1.0 + z)


cdef inline floating tanh_(floating x) noexcept nogil:
    """Hyperbolic tangent (libm's, which saturates cleanly at +-1)."""
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)
