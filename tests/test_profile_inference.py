"""benchmarks/profile_inference.py, where a model's inference time goes (issue 31's "find where the time goes
with the backend's own profiler"): zoo's side profiled for real on this CPU, and the GPU trace's layout (which
only a GPU writes) read from a trace laid out as the profiler lays it out there."""
import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "profile_inference.py"


def script():
    """benchmarks/profile_inference.py as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("profile_inference", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_a_profile_puts_every_operation_of_zoos_program_in_a_category_and_a_failed_side_in_its_row(tmp_path):
    """Profiled on this CPU: the categories add up to the traced time, the convolutions and the head's matmul
    are recognised from the compiled program, the wall time stands beside it; timm has no baseline_cnn, so
    its side fails, and says why in its row while zoo's rows stay (exit status 1)."""
    out = tmp_path / "profile.csv"
    done = subprocess.run([sys.executable, str(SCRIPT), "baseline_cnn", "--size", "32", "--batch", "4", "--precision",
                           "float32", "--steps", "3", "--top", "2", "--csv", str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    rows = list(csv.DictReader(open(out)))
    zoo = [row for row in rows if row["side"] == "zoo"]
    [total] = [row for row in zoo if row["level"] == "total"]
    assert not total["error"] and total["name"] == "host XLA operations"
    assert float(total["ms_per_batch"]) > 0 and float(total["wall_ms_per_batch"]) > 0
    categories = {row["name"]: float(row["ms_per_batch"]) for row in zoo if row["level"] == "category"}
    assert sum(categories.values()) == pytest.approx(float(total["ms_per_batch"]), rel=1e-6)
    assert categories.get("convolution", 0) > 0 and categories.get("matmul", 0) > 0, categories
    assert categories.get("other", 0) < 0.2 * float(total["ms_per_batch"]), categories
    for category in categories:  # each category's heaviest operations, the heaviest first
        operations = [float(row["ms_per_batch"]) for row in zoo if row["level"] == "operation"
                      and row["category"] == category]
        assert 0 < len(operations) <= 2 and operations == sorted(operations, reverse=True), (category, zoo)
    assert all(row["device"].startswith("CPU") and row["precision"] == "float32" and row["batch_size"] == "4"
               and "jax" in row["versions"] for row in zoo)
    [timm] = [row for row in rows if row["side"] == "timm"]
    assert timm["error"] and not timm["ms_per_batch"], timm
    assert "timm: " in done.stdout and "convolution" in done.stdout


# The optimised HLO of a GPU program, as XLA prints it (a cuDNN convolution as a custom call and as a cuDNN
# fusion, cuBLAS's matmul, loop fusions holding a concatenation, a max pool and batch norm's arithmetic, a
# transpose).
GPU_HLO = """HloModule jit_inference, is_scheduled=true, entry_computation_layout={(f16[64,224,224,3]{3,2,1,0})->f16[64,1000]{1,0}}

%fused_concatenate (param_0.1: f16[64,56,56,64], param_1.2: f16[64,56,56,32]) -> f16[64,56,56,96] {
  %param_0.1 = f16[64,56,56,64]{3,2,1,0} parameter(0)
  %param_1.2 = f16[64,56,56,32]{3,2,1,0} parameter(1)
  ROOT %concatenate.7 = f16[64,56,56,96]{3,2,1,0} concatenate(%param_0.1, %param_1.2), dimensions={3}, metadata={op_name="jit(inference)/concatenate/concatenate"}
}

%fused_multiply (param_0.3: f16[64,56,56,96], param_1.4: f32[96]) -> f16[64,56,56,96] {
  %param_0.3 = f16[64,56,56,96]{3,2,1,0} parameter(0)
  %convert.1 = f32[64,56,56,96]{3,2,1,0} convert(%param_0.3)
  %param_1.4 = f32[96]{0} parameter(1)
  %broadcast.2 = f32[64,56,56,96]{3,2,1,0} broadcast(%param_1.4), dimensions={3}
  %multiply.3 = f32[64,56,56,96]{3,2,1,0} multiply(%convert.1, %broadcast.2)
  %constant.4 = f32[] constant(0)
  %broadcast.5 = f32[64,56,56,96]{3,2,1,0} broadcast(%constant.4), dimensions={}
  %maximum.6 = f32[64,56,56,96]{3,2,1,0} maximum(%multiply.3, %broadcast.5)
  ROOT %convert.7 = f16[64,56,56,96]{3,2,1,0} convert(%maximum.6)
}

%fused_transpose (param_0.5: f16[64,3,224,224]) -> f16[64,224,224,3] {
  %param_0.5 = f16[64,3,224,224]{3,2,1,0} parameter(0)
  ROOT %transpose.8 = f16[64,224,224,3]{3,2,1,0} transpose(%param_0.5), dimensions={0,2,3,1}
}

%max_computation (x: f16[], y: f16[]) -> f16[] {
  %x = f16[] parameter(0)
  %y = f16[] parameter(1)
  ROOT %maximum.9 = f16[] maximum(%x, %y)
}

%fused_pool (param_0.6: f16[64,112,112,64]) -> f16[64,56,56,64] {
  %param_0.6 = f16[64,112,112,64]{3,2,1,0} parameter(0)
  %constant.9 = f16[] constant(-inf)
  ROOT %reduce-window.10 = f16[64,56,56,64]{3,2,1,0} reduce-window(%param_0.6, %constant.9), window={size=1x3x3x1 stride=1x2x2x1 pad=0_0x1_1x1_1x0_0}, to_apply=%max_computation
}

%cudnn_fusion_computation (p0: f16[64,56,56,96], p1: f16[1,1,96,128]) -> f16[64,56,56,128] {
  %p0 = f16[64,56,56,96]{3,2,1,0} parameter(0)
  %p1 = f16[1,1,96,128]{3,2,1,0} parameter(1)
  ROOT %convolution.11 = f16[64,56,56,128]{3,2,1,0} convolution(%p0, %p1), window={size=1x1}, dim_labels=b01f_01io->b01f
}

ENTRY %main.20 (Arg_0.1: f16[64,224,224,3], Arg_1.2: f16[7,7,3,64], Arg_2.3: f16[64], Arg_3.4: f32[96], Arg_4.5: f16[1024,1000]) -> f16[64,1000] {
  %Arg_0.1 = f16[64,224,224,3]{3,2,1,0} parameter(0)
  %Arg_1.2 = f16[7,7,3,64]{3,2,1,0} parameter(1)
  %Arg_2.3 = f16[64]{0} parameter(2)
  %Arg_3.4 = f32[96]{0} parameter(3)
  %Arg_4.5 = f16[1024,1000]{1,0} parameter(4)
  %transpose_fusion.2 = f16[64,224,224,3]{3,2,1,0} fusion(%Arg_0.1), kind=kInput, calls=%fused_transpose
  %cudnn-conv-bias-activation.3 = (f16[64,112,112,64]{3,2,1,0}, u8[0]{0}) custom-call(%transpose_fusion.2, %Arg_1.2, %Arg_2.3), window={size=7x7 stride=2x2 pad=3_3x3_3}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBiasActivationForward", backend_config={"operation_queue_id":"0"}
  %get-tuple-element.4 = f16[64,112,112,64]{3,2,1,0} get-tuple-element(%cudnn-conv-bias-activation.3), index=0
  %loop_reduce_window_fusion = f16[64,56,56,64]{3,2,1,0} fusion(%get-tuple-element.4), kind=kLoop, calls=%fused_pool
  %loop_concatenate_fusion.5 = f16[64,56,56,96]{3,2,1,0} fusion(%loop_reduce_window_fusion, %loop_reduce_window_fusion), kind=kLoop, calls=%fused_concatenate
  %loop_multiply_fusion = f16[64,56,56,96]{3,2,1,0} fusion(%loop_concatenate_fusion.5, %Arg_3.4), kind=kLoop, calls=%fused_multiply
  %cudnn-fusion.1 = f16[64,56,56,128]{3,2,1,0} fusion(%loop_multiply_fusion, %Arg_1.2), kind=kCustom, calls=%cudnn_fusion_computation, backend_config={"fusion_backend_config":{"kind":"__cudnn$fusion"}}
  %bitcast.6 = f16[64,1024]{1,0} bitcast(%cudnn-fusion.1)
  %custom-call.7 = (f16[64,1000]{1,0}, s8[4194304]{0}) custom-call(%bitcast.6, %Arg_4.5), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{}}
  ROOT %get-tuple-element.8 = f16[64,1000]{1,0} get-tuple-element(%custom-call.7), index=0
}
"""


def test_a_gpu_trace_counts_each_kernel_once_by_the_hlo_operation_it_ran():
    """On a GPU the device's process holds the stream lines (one event per kernel) and lines derived from
    them ("XLA Ops", "XLA Modules"): only the kernels count, named by the HLO operation they ran, another
    program's kernels left out; a kernel the trace gives no operation for is known by XLA's kernel name or,
    for a library's kernel, by what its name says."""
    profile = script()
    categories = profile.hlo_categories(GPU_HLO)
    assert {name: categories[name] for name in ("cudnn-conv-bias-activation.3", "cudnn-fusion.1", "custom-call.7",
                                                "loop_concatenate_fusion.5", "loop_multiply_fusion",
                                                "loop_reduce_window_fusion", "transpose_fusion.2")} == {
        "cudnn-conv-bias-activation.3": "convolution", "cudnn-fusion.1": "convolution", "custom-call.7": "matmul",
        "loop_concatenate_fusion.5": "concatenate", "loop_multiply_fusion": "elementwise",
        "loop_reduce_window_fusion": "pooling", "transpose_fusion.2": "layout"}

    stream, ops, modules, host = (1, 11), (1, 12), (1, 13), (701, 3)
    metadata = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
                {"ph": "M", "pid": 701, "name": "process_name", "args": {"name": "/host:CPU"}},
                *({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}
                  for (pid, tid), name in ((stream, "Stream #13(Compute)"), (ops, "XLA Ops"),
                                           (modules, "XLA Modules"), (host, "python")))]

    def event(where, name, micros, **args):
        return {"ph": "X", "pid": where[0], "tid": where[1], "ts": 0.0, "dur": micros, "name": name, "args": args}

    kernels = [event(stream, "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32", 300.0, hlo_op="cudnn-conv-bias-activation.3",
                     hlo_module="jit_inference"),
               event(stream, "loop_concatenate_fusion_5", 40.0, hlo_op="loop_concatenate_fusion.5",
                     hlo_module="jit_inference"),
               event(stream, "loop_concatenate_fusion_5", 40.0, hlo_op="loop_concatenate_fusion.5",
                     hlo_module="jit_inference"),
               event(stream, "loop_multiply_fusion", 25.0, hlo_op="loop_multiply_fusion", hlo_module="jit_inference"),
               event(stream, "loop_multiply_fusion", 7.0),  # a kernel the trace did not tie to its operation
               event(stream, "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n", 15.0),
               event(stream, "input_reduce_fusion", 99.0, hlo_op="reduce.1", hlo_module="jit_train_step")]
    derived = [event(ops, "%cudnn-conv-bias-activation.3 = (f16[64,112,112,64]) custom-call(...)", 300.0),
               event(modules, "jit_inference(123)", 420.0), event(host, "PjitFunction(inference)", 500.0)]
    events = [*kernels, *derived]
    processes = {e["pid"]: e["args"]["name"] for e in metadata if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in metadata if e["name"] == "thread_name"}

    micros, calls, measured_on = profile.operation_times(events, processes, threads, "jit_inference")
    assert measured_on == "device kernels"
    assert dict(micros) == {"cudnn-conv-bias-activation.3": 300.0, "loop_concatenate_fusion.5": 80.0,
                            "loop_multiply_fusion": 32.0, "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n": 15.0}
    assert calls["loop_concatenate_fusion.5"] == 2
    assert [profile.operation_category(name, categories) for name in micros] == [
        "convolution", "concatenate", "elementwise", "matmul"]
    assert profile.operation_category("loop_concatenate_fusion_5", categories) == "concatenate"  # XLA's kernel name

    # A trace without stream lines: the derived "XLA Ops" line, each operation named by its HLO text's name.
    micros, _, measured_on = profile.operation_times(derived, processes, threads, "jit_inference")
    assert measured_on == "device XLA operations" and dict(micros) == {"cudnn-conv-bias-activation.3": 300.0}


def test_library_kernels_and_aten_operations_fall_in_the_category_their_work_belongs_to():
    """timm's side is named by kernels (GPU) or ATen operations (CPU); cuDNN's batch norm is not a convolution,
    a Hopper convolution's implicit GEMM is not a matmul, PyTorch's copies are layout."""
    category = script().kernel_category
    assert [category(name) for name in [
        "sm90_xmma_fprop_implicit_gemm_indexed_wo_smem_f16f16_f16f32_f32_nhwckrsc_nhwc",
        "void cudnn::bn_fw_inf_1C11_kernel_NCHW<__half, float, true, 1>",
        "void at::native::batch_norm_transform_input_channels_last_kernel<c10::Half, float, float, int>",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType<2u>>",
        "sm80_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x32",
        "void at::native::elementwise_kernel<128, 2, at::native::direct_copy_kernel_cuda>",
        "void at::native::vectorized_elementwise_kernel<4, at::native::clamp_min_scalar_kernel_impl>",
        "void at::native::(anonymous namespace)::max_pool_forward_nhwc<c10::Half, float>",
        "aten::mkldnn_convolution", "aten::native_batch_norm", "aten::cat", "aten::addmm", "aten::empty"]] == ["convolution", "elementwise", "elementwise", "concatenate", "matmul", "layout", "elementwise", "pooling",
            "convolution", "elementwise", "concatenate", "matmul", "other"]
