#include "tls/cert_cache.h"

#include <doctest/doctest.h>

#include <atomic>
#include <thread>

using namespace sightline::tls;

namespace {
std::string key(int i) {
  std::string k(32, '\0');
  k[0] = static_cast<char>(i);  // shard by first byte
  k[1] = static_cast<char>(i >> 8);
  return k + "t" + "host" + std::to_string(i);
}
ForgedPtr value(std::uint64_t gen) {
  auto v = std::make_shared<ForgedCert>();
  v->key_generation = gen;
  return v;
}
}  // namespace

TEST_CASE("miss, publish, hit") {
  CertCache cache(64);
  ForgedPtr out;
  int waited = 0;
  CHECK(cache.acquire(key(1), 1, &out, [&](ForgedPtr) { ++waited; }) == CertCache::Lookup::create);
  // A second caller for the same key waits instead of forging again.
  CHECK(cache.acquire(key(1), 1, &out, [&](ForgedPtr v) { waited += v ? 10 : 100; }) ==
        CertCache::Lookup::pending);
  auto v = value(1);
  cache.publish(key(1), v);
  CHECK(waited == 10);
  CHECK(cache.acquire(key(1), 1, &out, [](ForgedPtr) {}) == CertCache::Lookup::hit);
  CHECK(out == v);
  CHECK(cache.hits() == 1);
  CHECK(cache.misses() == 1);
  CHECK(cache.size() == 1);
}

TEST_CASE("failed forging is not cached and waiters learn of it") {
  CertCache cache(64);
  ForgedPtr out;
  bool got_null = false;
  REQUIRE(cache.acquire(key(2), 1, &out, [](ForgedPtr) {}) == CertCache::Lookup::create);
  REQUIRE(cache.acquire(key(2), 1, &out, [&](ForgedPtr v) { got_null = !v; }) ==
          CertCache::Lookup::pending);
  cache.publish(key(2), nullptr);
  CHECK(got_null);
  CHECK(cache.acquire(key(2), 1, &out, [](ForgedPtr) {}) == CertCache::Lookup::create);
}

TEST_CASE("a rotated key generation is a miss") {
  CertCache cache(64);
  ForgedPtr out;
  REQUIRE(cache.acquire(key(3), 1, &out, [](ForgedPtr) {}) == CertCache::Lookup::create);
  cache.publish(key(3), value(1));
  CHECK(cache.acquire(key(3), 2, &out, [](ForgedPtr) {}) == CertCache::Lookup::create);
}

TEST_CASE("LRU eviction keeps the cache bounded") {
  CertCache cache(16);  // one entry per shard
  ForgedPtr out;
  for (int i = 0; i < 16 * 5; ++i) {
    REQUIRE(cache.acquire(key(i), 1, &out, [](ForgedPtr) {}) == CertCache::Lookup::create);
    cache.publish(key(i), value(1));
  }
  CHECK(cache.size() == 16);
  // The most recent entry of each shard is still there; older ones are gone.
  CHECK(cache.acquire(key(16 * 5 - 1), 1, &out, [](ForgedPtr) {}) == CertCache::Lookup::hit);
  CHECK(cache.acquire(key(0), 1, &out, [](ForgedPtr) {}) == CertCache::Lookup::create);
}

TEST_CASE("single flight across threads") {
  CertCache cache(1024);
  std::atomic<int> creators{0}, delivered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      ForgedPtr out;
      auto r = cache.acquire(key(7), 1, &out, [&](ForgedPtr v) {
        if (v) ++delivered;
      });
      if (r == CertCache::Lookup::create) {
        ++creators;
        cache.publish(key(7), value(1));
        ++delivered;
      } else if (r == CertCache::Lookup::hit) {
        ++delivered;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(creators == 1);
  CHECK(delivered == 8);
}

#include "policy/auto_bypass.h"

TEST_CASE("auto-bypass pairs expire and the table stays bounded") {
  using sightline::policy::AutoBypass;
  AutoBypass ab(std::chrono::seconds(10), 32);  // 2 per shard
  auto t0 = AutoBypass::Clock::now();
  CHECK(ab.add("10.0.0.1", "pinned.example", t0));
  CHECK_FALSE(ab.add("10.0.0.1", "pinned.example", t0));  // already there
  CHECK(ab.contains("10.0.0.1", "pinned.example", t0 + std::chrono::seconds(5)));
  CHECK_FALSE(ab.contains("10.0.0.2", "pinned.example", t0));
  CHECK_FALSE(ab.contains("10.0.0.1", "pinned.example", t0 + std::chrono::seconds(11)));
  for (int i = 0; i < 1000; ++i) ab.add("10.0.1." + std::to_string(i), "x.example", t0);
  CHECK(ab.size() <= 32);
  CHECK(ab.activations() >= 1000);
}
