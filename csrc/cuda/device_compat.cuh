// The few spellings the kernels need that differ between nvcc and a host C++ compiler. Under nvcc these are
// the CUDA ones; tests/test_cuda_emulated.py predefines them to run the kernels serially on the CPU.
#pragma once

#ifndef EG_DYNAMIC_SHARED
// The block's dynamic shared memory, as an array of `type` named `name`.
#define EG_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif
