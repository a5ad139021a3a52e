#include "tls/client_hello.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

using namespace sightline::tls;

namespace {

std::vector<std::uint8_t> load(const std::string& name) {
  std::ifstream in(std::string(SIGHTLINE_TEST_DATA) + "/clienthello/" + name, std::ios::binary);
  REQUIRE(in.good());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Re-frames one handshake message into records of at most `chunk` bytes.
std::vector<std::uint8_t> reframe(const std::vector<std::uint8_t>& wire, std::size_t chunk) {
  std::vector<std::uint8_t> msg(wire.begin() + 5, wire.end());
  std::vector<std::uint8_t> out;
  for (std::size_t off = 0; off < msg.size(); off += chunk) {
    std::size_t n = std::min(chunk, msg.size() - off);
    out.insert(out.end(), {22, 3, 1, static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n)});
    out.insert(out.end(), msg.begin() + static_cast<long>(off), msg.begin() + static_cast<long>(off + n));
  }
  return out;
}

const char* kFiles[] = {"chromium-156.bin", "curl-7.88-openssl-3.0.bin",
                        "openssl-3.0-s_client-tls13.bin", "python-3.11-ssl.bin"};

}  // namespace

TEST_CASE("real ClientHellos parse with SNI, ALPN and versions") {
  for (const char* f : kFiles) {
    CAPTURE(f);
    auto wire = load(f);
    ClientHelloInfo info;
    auto res = parse_client_hello(wire, info);
    REQUIRE(res.status == HelloStatus::done);
    CHECK(info.sni == "www.example-intercept.test");
    CHECK(info.record_bytes == wire.size());
    CHECK(offers_tls13(info));
  }
  ClientHelloInfo info;
  REQUIRE(parse_client_hello(load("curl-7.88-openssl-3.0.bin"), info).status == HelloStatus::done);
  CHECK(info.alpn == std::vector<std::string>{"h2", "http/1.1"});
}

TEST_CASE("every prefix of a ClientHello asks for more") {
  for (const char* f : kFiles) {
    CAPTURE(f);
    auto wire = load(f);
    for (std::size_t n = 1; n < wire.size(); ++n) {
      ClientHelloInfo info;
      auto res = parse_client_hello(std::span(wire.data(), n), info);
      REQUIRE(res.status == HelloStatus::need_more);
    }
  }
}

TEST_CASE("a ClientHello split across many records") {
  auto wire = load("chromium-156.bin");
  REQUIRE(wire.size() > 1500);
  for (std::size_t chunk : {1u, 7u, 100u, 1000u}) {
    CAPTURE(chunk);
    auto split = reframe(wire, chunk);
    ClientHelloInfo info;
    auto res = parse_client_hello(split, info);
    REQUIRE(res.status == HelloStatus::done);
    CHECK(info.sni == "www.example-intercept.test");
    CHECK(info.record_bytes == split.size());
  }
}

TEST_CASE("not TLS and malformed inputs") {
  ClientHelloInfo info;
  std::string http = "GET / HTTP/1.1\r\n";
  CHECK(parse_client_hello(std::span(reinterpret_cast<const std::uint8_t*>(http.data()), http.size()), info).status ==
        HelloStatus::not_tls);

  auto wire = load("curl-7.88-openssl-3.0.bin");
  auto bad = wire;
  bad[5] = 2;  // ServerHello instead of ClientHello
  CHECK(parse_client_hello(bad, info).status == HelloStatus::malformed);

  bad = wire;
  bad[3] = 0x7f;  // record length beyond the maximum
  bad[4] = 0xff;
  CHECK(parse_client_hello(bad, info).status == HelloStatus::malformed);

  bad = wire;
  bad[6] = 0x01;  // handshake length 64 KiB+ > cap
  CHECK(parse_client_hello(bad, info).status == HelloStatus::malformed);

  // Extensions length that disagrees with the message.
  bad = wire;
  std::size_t ext_len_pos = 5 + 4 + 2 + 32;
  ext_len_pos += 1 + bad[ext_len_pos];
  std::size_t cs = (std::size_t{bad[ext_len_pos]} << 8) | bad[ext_len_pos + 1];
  ext_len_pos += 2 + cs;
  ext_len_pos += 1 + bad[ext_len_pos];
  bad[ext_len_pos + 1] ^= 0x01;
  CHECK(parse_client_hello(bad, info).status == HelloStatus::malformed);

  // A non-handshake record in the middle of a split hello.
  auto split = reframe(load("chromium-156.bin"), 500);
  split[5 + 500] = 23;
  CHECK(parse_client_hello(split, info).status == HelloStatus::malformed);
}

// Minimal TLS 1.2-style ClientHello carrying one host_name.
std::vector<std::uint8_t> hello_with_sni(const std::string& name) {
  std::vector<std::uint8_t> body = {0x03, 0x03};
  body.insert(body.end(), 32, 0x11);                  // random
  body.push_back(0);                                  // session id
  body.insert(body.end(), {0x00, 0x02, 0x13, 0x01});  // one cipher suite
  body.insert(body.end(), {0x01, 0x00});              // null compression
  const auto n = static_cast<std::uint8_t>(name.size());
  std::vector<std::uint8_t> sni = {0x00, 0x00, 0x00, static_cast<std::uint8_t>(n + 5), 0x00,
                                   static_cast<std::uint8_t>(n + 3), 0x00, 0x00, n};
  sni.insert(sni.end(), name.begin(), name.end());
  body.push_back(0x00);
  body.push_back(static_cast<std::uint8_t>(sni.size()));
  body.insert(body.end(), sni.begin(), sni.end());
  const std::uint8_t header[] = {22, 3, 1, 0, static_cast<std::uint8_t>(body.size() + 4), 1, 0, 0,
                                 static_cast<std::uint8_t>(body.size())};
  // Sized once: GCC 12 at -O3 misreads an insert after an initializer list
  // as out of bounds (-Warray-bounds).
  std::vector<std::uint8_t> wire(sizeof header + body.size());
  std::copy(std::begin(header), std::end(header), wire.begin());
  std::copy(body.begin(), body.end(), wire.begin() + sizeof header);
  return wire;
}

TEST_CASE("an IP literal sent as server_name counts as no SNI") {
  ClientHelloInfo info;
  REQUIRE(parse_client_hello(hello_with_sni("::1"), info).status == HelloStatus::done);
  CHECK(info.sni.empty());
  CHECK(info.sni_is_ip);
}

TEST_CASE("server_name is lower-cased, loses its root dot, and has no empty label") {
  ClientHelloInfo info;
  REQUIRE(parse_client_hello(hello_with_sni("WWW.Example.COM."), info).status == HelloStatus::done);
  CHECK(info.sni == "www.example.com");
  // Found by the fuzzer: "a.." once lost one dot and came out as "a.".
  for (const char* bad : {"a..", ".", "..", ".a", "a..b", "a.b.."}) {
    CAPTURE(bad);
    ClientHelloInfo out;
    CHECK(parse_client_hello(hello_with_sni(bad), out).status == HelloStatus::malformed);
  }
}
