// Prints elementwise.h's resampling taps so tests/test_native_math.py can compare them with
// torch.nn.functional.interpolate. Reads "in_len out_len" pairs from stdin; for each output index prints
// "i0 i1 w0 w1 nearest" on one line.
#include <cstdio>

#include "editgan/elementwise.h"

int main() {
  int in, out;
  while (std::scanf("%d %d", &in, &out) == 2) {
    for (int o = 0; o < out; ++o) {
      editgan::LinearTaps t = editgan::linear_taps(o, in, out);
      std::printf("%d %d %.9g %.9g %d\n", t.i0, t.i1, t.w0, t.w1, editgan::nearest_index(o, in, out));
    }
  }
  return 0;
}
