// Argument checks of the C++ ops (checks.h), compiled for the baseline x86-64 ISA.
#include "checks.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace ibert {
namespace {

std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case torch::kInt8: return "int8";
    case torch::kUInt8: return "uint8";
    case torch::kInt32: return "int32";
    case torch::kInt64: return "int64";
    default: return c10::toString(t);
  }
}

}  // namespace

int64_t qmax_of(int64_t bits) { return (int64_t(1) << (bits - 1)) - 1; }

int64_t layernorm_max_input(int64_t n) {  // 2**b, b <= 31 the largest with (2**(b + 17))**2 n**3 < 2**124
  const uint64_t n3 = uint64_t(n) * uint64_t(n) * uint64_t(n);  // n < 2**16: n**3 < 2**48
  int64_t b = 31;
  while (b > 0 && 90 - 2 * b < 64 && n3 >= uint64_t(1) << (90 - 2 * b)) --b;
  return int64_t(1) << b;
}

void check_tensor(const char* op, const char* name, const torch::Tensor& t, c10::ScalarType dtype, int64_t dim) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype_name(dtype), ", got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_shape(const char* op, const char* name, const torch::Tensor& t, c10::ScalarType dtype,
                 c10::IntArrayRef sizes) {
  check_tensor(op, name, t, dtype, static_cast<int64_t>(sizes.size()));
  TORCH_CHECK_VALUE(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
}

void check_multiplier(const char* op, const char* name, const torch::Tensor& m, const torch::Tensor& e, int64_t n) {
  check_tensor(op, name, m, torch::kInt32, 1);
  check_tensor(op, name, e, torch::kInt32, 1);
  TORCH_CHECK_VALUE(m.numel() == e.numel() && (m.numel() == 1 || m.numel() == n), op, ": ", name,
                    " must be two int32 tensors of ", n == 1 ? "1 element" : "1 or " + std::to_string(n) + " elements",
                    ", got ", m.numel(), " and ", e.numel());
  const int32_t* shift = e.data_ptr<int32_t>();
  for (int64_t i = 0; i < e.numel(); ++i)
    TORCH_CHECK_VALUE(shift[i] >= 0 && shift[i] <= 62, op, ": ", name, ": shifts must be in [0, 62], got ", shift[i],
                      " at ", i);
}

void check_range(const char* op, const char* name, int64_t value, int64_t lo, int64_t hi) {
  TORCH_CHECK_VALUE(value >= lo && value <= hi, op, ": ", name, " must be in [", lo, ", ", hi, "], got ", value);
}

void check_packed(const char* op, const char* name, const torch::Tensor& packed, int64_t N, int64_t K) {
  check_tensor(op, name, packed, torch::kUInt8, 4);
  const int64_t panels = (N + 63) / 64, groups = (K + 3) / 4;
  TORCH_CHECK_VALUE(N >= 1 && packed.sizes() == c10::IntArrayRef({panels, groups, 64, 4}), op, ": ", name,
                    " must be pack_weight's [ceil(N / 64), ceil(K / 4), 64, 4] = [", panels, ", ", groups,
                    ", 64, 4] for N = ", N, " outputs and K = ", K, ", got ", packed.sizes());
}

void check_softmax_params(const char* op, const char* name, const torch::Tensor& params) {
  check_shape(op, name, params, torch::kInt64, {5});
  const int64_t* p = params.data_ptr<int64_t>();
  const std::string of = std::string(" (") + name;
  check_range(op, ("the softmax ln2 step x0" + of + "[0])").c_str(), p[0], -(1 << 14), -1);  // divides
  check_range(op, ("the softmax polynomial's b" + of + "[1])").c_str(), p[1], 0, 1 << 16);
  check_range(op, ("the softmax polynomial's c" + of + "[2])").c_str(), p[2], 0, 1 << 30);
  check_range(op, ("the softmax exp shift" + of + "[3])").c_str(), p[3], 0, 31);
  check_range(op, ("the softmax input shift" + of + "[4])").c_str(), p[4], 0, 31);
}

void check_gelu_params(const char* op, const char* name, const torch::Tensor& params) {
  check_shape(op, name, params, torch::kInt64, {5});
  const int64_t* g = params.data_ptr<int64_t>();
  for (int i = 0; i < 5; ++i) check_range(op, name, g[i], INT32_MIN, INT32_MAX);  // the kernel's int32 lanes
  check_range(op, (std::string("the i-GELU erf shift k (") + name + "[2])").c_str(), g[2], 0, 31);
  check_range(op, (std::string("the i-GELU input shift r (") + name + "[4])").c_str(), g[4], 0, 31);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAmxInt8: return "amx_int8";
    case Isa::kAvx512Vnni: return "avx512_vnni";
    case Isa::kAvx2: return "avx2";
    default: return "none";
  }
}

namespace {

constexpr Isa kIsas[] = {Isa::kAmxInt8, Isa::kAvx512Vnni, Isa::kAvx2, Isa::kNone};  // best first

// Linux lets a process use the AMX tile registers once it asks (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA).
bool tiles_permitted() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool granted = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
}

// The features of `isa` this CPU lacks, as " f1 f2".
std::string missing_features(Isa isa) {
  __builtin_cpu_init();
  std::string s;
  const auto need = [&](bool has, const char* name) { if (!has) s += std::string(" ") + name; };
  if (isa == Isa::kAmxInt8) {
    s = missing_features(Isa::kAvx512Vnni);
    need(__builtin_cpu_supports("amx-tile"), "amx_tile");
    need(__builtin_cpu_supports("amx-int8"), "amx_int8");
    if (s.empty()) need(tiles_permitted(), "(Linux's permission to use AMX tiles, arch_prctl ARCH_REQ_XCOMP_PERM)");
  } else if (isa == Isa::kAvx512Vnni) {
    need(__builtin_cpu_supports("avx512f"), "avx512f");
    need(__builtin_cpu_supports("avx512bw"), "avx512bw");
    need(__builtin_cpu_supports("avx512vl"), "avx512vl");
    need(__builtin_cpu_supports("avx512dq"), "avx512dq");
    need(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
  } else if (isa == Isa::kAvx2) {
    need(__builtin_cpu_supports("avx2"), "avx2");
  }
  return s;
}

}  // namespace

Isa isa_named(const char* what, const std::string& name) {
  for (Isa isa : kIsas)
    if (name == isa_name(isa)) return isa;
  TORCH_CHECK_VALUE(false, what, " must be amx_int8, avx512_vnni, avx2 or none, got '", name, "'");
  return Isa::kNone;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (Isa isa : kIsas)
    if (missing_features(isa).empty()) names.push_back(isa_name(isa));
  return names;
}

Isa simd_isa() {
  static const Isa best = [] {
    for (Isa isa : kIsas)
      if (missing_features(isa).empty()) return isa;
    return Isa::kNone;
  }();
  const char* forced = std::getenv("IBERT_CPU_ISA");
  if (!forced || !*forced) return best;
  const Isa isa = isa_named("IBERT_CPU_ISA", forced);
  const std::string missing = missing_features(isa);
  TORCH_CHECK(missing.empty(), "IBERT_CPU_ISA=", forced, ": this CPU lacks", missing);
  return isa;
}

Isa require_simd(const char* op, Isa need) {
  const Isa isa = simd_isa();
  if (isa >= need) return isa;
  const std::string missing = missing_features(need);
  TORCH_CHECK(!missing.empty(), op, ": the C++ kernels run on ", isa_name(isa), " here (IBERT_CPU_ISA), this op needs ",
              isa_name(need));
  TORCH_CHECK(false, op, ": the C++ kernels need ", need == Isa::kAvx2 ? "AVX2" : isa_name(need), "; this CPU lacks",
              missing, " (the torch backend runs everywhere)");
  return isa;
}

}  // namespace ibert
