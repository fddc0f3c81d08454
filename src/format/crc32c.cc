#include "format/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#define SW_CRC_X86 1
#endif

namespace shardwise::format {
namespace {

constexpr std::uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli

// Slicing-by-8 tables for the portable path.
struct Tables {
  std::uint32_t t[8][256];
  Tables() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kPoly & (0u - (c & 1u)));
      t[0][i] = c;
    }
    for (int s = 1; s < 8; ++s)
      for (int i = 0; i < 256; ++i)
        t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};
const Tables& T() {
  static const Tables tables;
  return tables;
}

// Raw (no pre/post inversion) portable update.
std::uint32_t RawPortable(std::uint32_t c, const unsigned char* p,
                          std::size_t n) {
  const auto& t = T().t;
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);  // little-endian hosts only (x86-64, aarch64)
    w ^= c;
    c = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^
        t[4][(w >> 24) & 0xFF] ^ t[3][(w >> 32) & 0xFF] ^
        t[2][(w >> 40) & 0xFF] ^ t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFF];
  return c;
}

#ifdef SW_CRC_X86
// Three streams of kLane bytes each are checksummed in parallel to hide the
// 3-cycle latency of the crc32 instruction, then joined with the linear
// operator "advance over kLane zero bytes", applied through byte tables.
constexpr std::size_t kLane = 8192;

__attribute__((target("sse4.2"))) std::uint32_t RawHwSerial(
    std::uint32_t c, const unsigned char* p, std::size_t n) {
  std::uint64_t c64 = c;
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
    p += 8;
    n -= 8;
  }
  c = static_cast<std::uint32_t>(c64);
  while (n--) c = _mm_crc32_u8(c, *p++);
  return c;
}

// Operator tables: shift[k][b] = state after advancing (b << 8k) over `len`
// zero bytes.
struct ShiftOp {
  std::uint32_t t[4][256];
  explicit ShiftOp(std::size_t len) {
    static const unsigned char kZeros[kLane * 2] = {};
    std::uint32_t basis[32];
    for (int i = 0; i < 32; ++i) basis[i] = RawHwSerial(1u << i, kZeros, len);
    for (int k = 0; k < 4; ++k)
      for (int b = 0; b < 256; ++b) {
        std::uint32_t v = 0;
        for (int bit = 0; bit < 8; ++bit)
          if (b & (1 << bit)) v ^= basis[k * 8 + bit];
        t[k][b] = v;
      }
  }
  std::uint32_t operator()(std::uint32_t c) const {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^
           t[3][c >> 24];
  }
};
const ShiftOp& Shift1() {
  static const ShiftOp op(kLane);
  return op;
}
const ShiftOp& Shift2() {
  static const ShiftOp op(2 * kLane);
  return op;
}

template <bool kCopy>
__attribute__((target("sse4.2"))) std::uint32_t RawHw(std::uint32_t c,
                                                      unsigned char* dst,
                                                      const unsigned char* p,
                                                      std::size_t n) {
  if (n >= 3 * kLane) {
    const ShiftOp& s1 = Shift1();
    const ShiftOp& s2 = Shift2();
    while (n >= 3 * kLane) {
      std::uint64_t a = c, b = 0, d = 0;
      const unsigned char* pa = p;
      const unsigned char* pb = p + kLane;
      const unsigned char* pd = p + 2 * kLane;
      for (std::size_t i = 0; i < kLane; i += 8) {
        std::uint64_t wa, wb, wd;
        std::memcpy(&wa, pa + i, 8);
        std::memcpy(&wb, pb + i, 8);
        std::memcpy(&wd, pd + i, 8);
        if constexpr (kCopy) {
          std::memcpy(dst + i, &wa, 8);
          std::memcpy(dst + kLane + i, &wb, 8);
          std::memcpy(dst + 2 * kLane + i, &wd, 8);
        }
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        d = _mm_crc32_u64(d, wd);
      }
      c = s2(static_cast<std::uint32_t>(a)) ^
          s1(static_cast<std::uint32_t>(b)) ^ static_cast<std::uint32_t>(d);
      p += 3 * kLane;
      if constexpr (kCopy) dst += 3 * kLane;
      n -= 3 * kLane;
    }
  }
  if constexpr (kCopy) std::memcpy(dst, p, n);
  return RawHwSerial(c, p, n);
}

bool DetectSse42() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx & bit_SSE4_2) != 0;
}
#endif

bool g_force_portable = false;

bool UseHw() {
#ifdef SW_CRC_X86
  static const bool has = DetectSse42();
  return has && !g_force_portable;
#else
  return false;
#endif
}

}  // namespace

std::uint32_t Crc32c(const void* data, std::size_t n, std::uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = ~crc;
#ifdef SW_CRC_X86
  if (UseHw()) return ~RawHw<false>(c, nullptr, p, n);
#endif
  return ~RawPortable(c, p, n);
}

std::uint32_t Crc32cCopy(void* dst, const void* src, std::size_t n,
                         std::uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  std::uint32_t c = ~crc;
#ifdef SW_CRC_X86
  if (UseHw()) return ~RawHw<true>(c, d, p, n);
#endif
  // Portable: copy in cache-sized pieces so the checksum reads hot data.
  constexpr std::size_t kPiece = 64 * 1024;
  while (n > 0) {
    std::size_t k = n < kPiece ? n : kPiece;
    std::memcpy(d, p, k);
    c = RawPortable(c, d, k);
    d += k;
    p += k;
    n -= k;
  }
  return ~c;
}

bool Crc32cHardware() { return UseHw(); }

void Crc32cForcePortable(bool portable) { g_force_portable = portable; }

}  // namespace shardwise::format
