/*
 * deploy_app: run an ofa-deploy compiled module (.so) with the TVM runtime alone.
 *
 *   deploy_app MODEL.so [--input X.f32] [--shape 1,3,224,224] [--output Y.f32]
 *                       [--repeat 20] [--warmup 3] [--topk 5] [--device cpu|cuda]
 *
 * The .so is a Relax VM executable (ONNX -> Relax -> tvm.compile -> export_library).
 * Loading it needs only libtvm_runtime.so + libtvm_ffi.so (no Python, no compiler):
 *   Module::LoadFromFile(.so) -> "vm_load_executable"() -> VM module
 *   VM "vm_initialization"(device_type, device_id, allocator, ...) -> VM "main"(input)
 * Only tvm-ffi headers are used: the TVM wheels ship an incomplete tvm/runtime include tree.
 *
 * Input/output files are raw little-endian float32, C order (numpy: x.astype('<f4').tofile()).
 * Without --input a constant 0.5 input is used (for timing only).
 * The latency printed is this app's wall-clock (input copy + main + output copy), median of
 * --repeat runs. Under qemu it measures the emulator, not the device: ignore it there.
 */
#include <dlfcn.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR

struct Options {
  std::string model;
  std::string input;
  std::string output;
  std::vector<int64_t> shape{1, 3, 224, 224};
  int repeat = 20;
  int warmup = 3;
  int topk = 5;
  std::string device = "cpu";
};

[[noreturn]] void Usage(const std::string& why) {
  std::cerr << "error: " << why << "\n"
            << "usage: deploy_app MODEL.so [--input X.f32] [--shape 1,3,224,224] [--output Y.f32]\n"
            << "                  [--repeat 20] [--warmup 3] [--topk 5] [--device cpu|cuda]\n";
  std::exit(2);
}

std::vector<int64_t> ParseShape(const std::string& text) {
  std::vector<int64_t> dims;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find_first_of(",x", start);
    if (end == std::string::npos) end = text.size();
    std::string tok = text.substr(start, end - start);
    if (tok.empty() || tok.find_first_not_of("0123456789") != std::string::npos || std::stoll(tok) <= 0) {
      Usage("--shape must be positive integers separated by ',' (got '" + text + "')");
    }
    dims.push_back(std::stoll(tok));
    start = end + 1;
  }
  return dims;
}

int ParseInt(const std::string& text, const char* flag, int min_value) {
  try {
    size_t used = 0;
    int v = std::stoi(text, &used);
    if (used == text.size() && v >= min_value) return v;
  } catch (const std::exception&) {
  }
  Usage(std::string(flag) + " must be an integer >= " + std::to_string(min_value));
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") opt.input = value();
    else if (arg == "--output") opt.output = value();
    else if (arg == "--shape") opt.shape = ParseShape(value());
    else if (arg == "--repeat") opt.repeat = ParseInt(value(), "--repeat", 1);
    else if (arg == "--warmup") opt.warmup = ParseInt(value(), "--warmup", 0);
    else if (arg == "--topk") opt.topk = ParseInt(value(), "--topk", 0);
    else if (arg == "--device") opt.device = value();
    else if (arg == "-h" || arg == "--help") Usage("help requested");
    else if (!arg.empty() && arg[0] == '-') Usage("unknown option " + arg);
    else if (opt.model.empty()) opt.model = arg;
    else Usage("more than one model given");
  }
  if (opt.model.empty()) Usage("no model .so given");
  if (opt.device != "cpu" && opt.device != "cuda") Usage("--device must be cpu or cuda");
  return opt;
}

std::vector<float> ReadFloats(const std::string& path, size_t count) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw std::runtime_error("cannot open input file " + path);
  auto bytes = static_cast<size_t>(f.tellg());
  if (bytes != count * sizeof(float)) {
    throw std::runtime_error("input file " + path + " has " + std::to_string(bytes) +
                             " bytes, --shape needs " + std::to_string(count * sizeof(float)));
  }
  std::vector<float> data(count);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(bytes));
  return data;
}

void WriteFloats(const std::string& path, const std::vector<float>& data) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!f) throw std::runtime_error("cannot write output file " + path);
}

ffi::Function Require(const ffi::Module& mod, const char* name) {
  ffi::Optional<ffi::Function> f = mod->GetFunction(name);
  if (!f.has_value()) throw std::runtime_error(std::string("module has no function '") + name + "'");
  return f.value();
}

ffi::Tensor FirstTensor(const ffi::Any& ret) {
  if (auto t = ret.try_cast<ffi::Tensor>()) return *t;
  if (auto arr = ret.try_cast<ffi::Array<ffi::Any>>()) {
    if (arr->size() > 0) return FirstTensor((*arr)[0]);
  }
  throw std::runtime_error("main returned " + ret.GetTypeKey() + ", expected a tensor");
}

void PrintTopK(const std::vector<float>& out, const ffi::ShapeView& shape, int k) {
  int64_t classes = shape.size() > 0 ? shape[shape.size() - 1] : 1;
  int64_t rows = classes > 0 ? static_cast<int64_t>(out.size()) / classes : 0;
  k = static_cast<int>(std::min<int64_t>(k, classes));
  for (int64_t r = 0; r < rows && k > 0; ++r) {
    const float* row = out.data() + r * classes;
    std::vector<int64_t> idx(classes);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [row](int64_t a, int64_t b) { return row[a] > row[b]; });
    std::printf("top-%d (batch %lld):\n", k, static_cast<long long>(r));
    for (int i = 0; i < k; ++i) {
      std::printf("  #%d  class %5lld  score %.6f\n", i + 1, static_cast<long long>(idx[i]), row[idx[i]]);
    }
  }
}

int Run(const Options& opt) {
  DLDevice dev{kDLCPU, 0};
  if (opt.device == "cuda") {
    // The CUDA runtime is a separate library in the TVM wheels; it must be loaded (and register
    // its module loader) before the model .so, which embeds the CUDA kernels as a fatbin.
    if (!dlopen("libtvm_runtime_cuda.so", RTLD_NOW | RTLD_GLOBAL)) {
      throw std::runtime_error(std::string("cannot load libtvm_runtime_cuda.so: ") + dlerror());
    }
    dev = DLDevice{kDLCUDA, 0};
  }

  ffi::Module lib = ffi::Module::LoadFromFile(opt.model);
  ffi::Module vm = Require(lib, "vm_load_executable")().cast<ffi::Module>();
  if (dev.device_type == kDLCPU) {
    Require(vm, "vm_initialization")(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  } else {  // the VM also needs the CPU for shape computations (as the Python VirtualMachine does)
    Require(vm, "vm_initialization")(static_cast<int>(dev.device_type), dev.device_id, kPooledAllocator,
                                     static_cast<int>(kDLCPU), 0, kPooledAllocator);
  }
  ffi::Function main_fn = Require(vm, "main");
  ffi::Function alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
  ffi::Function copy_in = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
  ffi::Function copy_out = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes");

  size_t count = 1;
  for (int64_t d : opt.shape) count *= static_cast<size_t>(d);
  std::vector<float> host_in = opt.input.empty() ? std::vector<float>(count, 0.5f) : ReadFloats(opt.input, count);
  DLDataType f32{kDLFloat, 32, 1};
  ffi::Tensor input = alloc(ffi::Shape(opt.shape), f32, dev, ffi::Optional<ffi::String>()).cast<ffi::Tensor>();

  std::vector<float> host_out;
  std::vector<int64_t> out_shape;
  auto run_once = [&]() {
    copy_in(input, static_cast<void*>(host_in.data()), static_cast<int64_t>(count * sizeof(float)));
    ffi::Tensor out = FirstTensor(main_fn(input));
    if (out.dtype().code != kDLFloat || out.dtype().bits != 32) throw std::runtime_error("output is not float32");
    host_out.resize(static_cast<size_t>(out.numel()));
    copy_out(out, static_cast<void*>(host_out.data()), static_cast<int64_t>(host_out.size() * sizeof(float)));
    out_shape.assign(out.shape().begin(), out.shape().end());
  };

  for (int i = 0; i < opt.warmup; ++i) run_once();
  std::vector<double> ms;
  for (int i = 0; i < opt.repeat; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    run_once();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }

  std::printf("output shape: ");
  for (size_t i = 0; i < out_shape.size(); ++i) std::printf(i ? "x%lld" : "%lld", static_cast<long long>(out_shape[i]));
  std::printf("\n");
  PrintTopK(host_out, ffi::ShapeView(out_shape.data(), out_shape.size()), opt.topk);
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  double median = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                    : 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
  std::printf("latency (app wall-clock: input copy + main + output copy, %s): median %.3f ms, "
              "min %.3f ms, max %.3f ms over %d runs after %d warm-up\n",
              opt.device.c_str(), median, sorted.front(), sorted.back(), opt.repeat, opt.warmup);
  if (!opt.output.empty()) WriteFloats(opt.output, host_out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  try {
    return Run(opt);
  } catch (const std::exception& e) {  // ffi::Error is a std::exception
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
