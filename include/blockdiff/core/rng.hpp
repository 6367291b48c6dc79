// A small, seeded, portable random number generator.
//
// xoshiro256** seeded through SplitMix64: the same seed gives the same stream on every platform
// and compiler (unlike std::uniform_real_distribution, whose output is implementation-defined),
// which is what makes sampling, noising and ablation runs reproducible.
#pragma once

#include <cstdint>

#include "blockdiff/core/macros.hpp"

namespace blockdiff {

class Rng {
 public:
  BLOCKDIFF_HOST_DEVICE explicit Rng(std::uint64_t seed = 0) {
    std::uint64_t x = seed;
    for (auto& s : state_) s = splitmix64(x);
  }

  //! The next 64 random bits.
  BLOCKDIFF_HOST_DEVICE std::uint64_t next() {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }
  //! Uniform in [0, 1), 24 random bits (every value exactly representable as float).
  BLOCKDIFF_HOST_DEVICE float uniform() { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }
  //! Uniform in [0, 1), 53 random bits.
  BLOCKDIFF_HOST_DEVICE double uniform_double() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  //! Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; the tiny bias is irrelevant here).
  BLOCKDIFF_HOST_DEVICE std::uint64_t below(std::uint64_t n) {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
  //! Standard normal (Box-Muller), for weight initialisation.
  double normal();
  //! Two independent standard normals: both coordinates of one Box-Muller draw (the first is
  //! what normal() would return).
  void normal_pair(double& first, double& second);

 private:
  BLOCKDIFF_HOST_DEVICE static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  BLOCKDIFF_HOST_DEVICE static std::uint64_t splitmix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::uint64_t state_[4];
};

}  // namespace blockdiff

#include <cmath>

inline double blockdiff::Rng::normal() {
  double u1 = uniform_double();
  while (u1 <= 0.0) u1 = uniform_double();
  const double u2 = uniform_double();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

inline void blockdiff::Rng::normal_pair(double& first, double& second) {
  double u1 = uniform_double();
  while (u1 <= 0.0) u1 = uniform_double();
  const double r = std::sqrt(-2.0 * std::log(u1)), angle = 6.283185307179586 * uniform_double();
  first = r * std::cos(angle);
  second = r * std::sin(angle);
}
