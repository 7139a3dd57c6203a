// Run-time instruction-set selection for the CPU kernels' hand-written loops (the GEMMs and convolutions go to
// ATen / oneDNN, which select their own).
//
// Each hot loop is written once as an always-inline body and compiled three times by EG_ISA_VARIANTS: for
// AVX-512 (F/BW/DQ/VL, 512-bit vectors), AVX2+FMA and portable x86-64. Which one runs is a process-wide
// setting, not a load-time CPU check (target_clones): the Python switch EDITGAN_FAST_CPU_ISA
// (editgan_fast/ops/_cpu_isa.py) forces any branch the CPU can execute, so an AVX-512 machine also tests the
// AVX2 and portable code. The default is the widest the CPU supports.
#pragma once

#include <cstdint>

namespace editgan {

enum class Isa : int { Portable = 0, Avx2 = 1, Avx512 = 2 };

Isa best_isa();    // the widest branch this CPU executes
Isa active_isa();  // the branch the kernels run now

}  // namespace editgan

#if defined(__x86_64__) && defined(__GNUC__)
#define EG_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")))
#define EG_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define EG_TARGET_AVX512
#define EG_TARGET_AVX2
#endif
#define EG_ALWAYS_INLINE __attribute__((always_inline)) inline  // so each variant compiles the body for its ISA

// NAME (PARAMS) calling NAME_avx512 / NAME_avx2 / NAME_portable, as the active ISA says. The template header
// comes last, variadic: expanded from a caller's argument, it may hold commas (`template <typename A, typename B>`).
#define EG_ISA_DISPATCH(RET, NAME, PARAMS, ARGS, ...)   \
  __VA_ARGS__ RET NAME PARAMS {                           \
    switch (editgan::active_isa()) {                      \
      case editgan::Isa::Avx512: return NAME##_avx512 ARGS; \
      case editgan::Isa::Avx2: return NAME##_avx2 ARGS;   \
      default: return NAME##_portable ARGS;               \
    }                                                     \
  }

// Given an always-inline NAME_body, defines NAME (same parameters) running NAME_body compiled for the active
// ISA. TEMPLATE: `template <typename T>` or empty; PARAMS / ARGS: the parenthesized parameter and argument
// lists (the template arguments must be deducible from ARGS).
#define EG_ISA_VARIANTS(TEMPLATE, RET, NAME, PARAMS, ARGS)                     \
  TEMPLATE EG_TARGET_AVX512 RET NAME##_avx512 PARAMS { return NAME##_body ARGS; } \
  TEMPLATE EG_TARGET_AVX2 RET NAME##_avx2 PARAMS { return NAME##_body ARGS; }     \
  TEMPLATE RET NAME##_portable PARAMS { return NAME##_body ARGS; }                \
  EG_ISA_DISPATCH(RET, NAME, PARAMS, ARGS, TEMPLATE)

// The same for a body written with explicit vectors, `template <int L, ...> NAME_body`, L the float lanes of
// one vector: 16 on AVX-512, 8 elsewhere (the portable build splits 8 into SSE halves).
#define EG_LANE_VARIANTS(TEMPLATE, RET, NAME, PARAMS, ARGS)                          \
  TEMPLATE EG_TARGET_AVX512 RET NAME##_avx512 PARAMS { return NAME##_body<16> ARGS; } \
  TEMPLATE EG_TARGET_AVX2 RET NAME##_avx2 PARAMS { return NAME##_body<8> ARGS; }      \
  TEMPLATE RET NAME##_portable PARAMS { return NAME##_body<8> ARGS; }                 \
  EG_ISA_DISPATCH(RET, NAME, PARAMS, ARGS, TEMPLATE)
