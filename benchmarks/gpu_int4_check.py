"""Quick eager check of the CUDA int4/int8 kernels (tinygemm's packed layout) against the dequantized weights:
the numbers the GPU test tier asserts, printed, for a lent GPU with little time (no compiling)."""
import torch

from opengemma.quantize import Int4Linear, Int8Linear, prepare_quantized

torch.manual_seed(2)
for cls, args in ((Int8Linear, ()), (Int4Linear, (32,)), (Int4Linear, (128,))):
    for M in (1, 5, 40):
        w, x = torch.randn(768, 2048) * 0.05, torch.randn(M, 2048).bfloat16()
        m = cls.from_float(w, *args, torch.bfloat16).to("cuda")
        prepare_quantized(m)
        ref = x.float() @ m.dequantized().cpu().T
        err = (m(x.cuda()).float().cpu() - ref).abs().max() / ref.abs().max()
        print(f"{cls.__name__}{args} M={M}: max error {err:.2e} of the output scale", "OK" if err < 0.01 else "FAIL")
