// libFuzzer target for the ICAP response parser (src/icap/icap_message.cc).
//
// Input: one mode byte, then the bytes an ICAP server sent.
//   bits 0-2  piece size for the cut-up run (0: whole; else 1..7 bytes)
//   bit 3     tiny limits, so the size checks are reached
//
// The stream is parsed as a sequence of responses (100 Continue and pipelined
// answers included), once whole and once cut up; both runs must agree on
// every response, the error and the bytes consumed. A complete response must
// be consistent: its Encapsulated parts valid, heads present exactly for the
// header sections, the body bounded, and its serialized heads parse again.
#include "fuzz_check.h"
#include "icap/icap_message.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

using sightline::icap::Limits;
using sightline::icap::ResponseParser;
using sightline::icap::Section;

namespace {

std::string run(std::string_view in, std::size_t step, const Limits& limits) {
  ResponseParser p(limits);
  std::string log;
  std::size_t off = 0, fed_until = 0;
  while (off < in.size()) {
    const std::size_t n = step == 0 ? in.size() - off : std::min(step, in.size() - off);
    std::size_t used = 0;
    const auto st = p.feed({in.data() + off, n}, &used);
    FUZZ_CHECK(used <= n);
    off += used;
    if (st == ResponseParser::Status::failed) {
      FUZZ_CHECK(!p.error().empty());
      FUZZ_CHECK(p.feed({in.data(), in.size()}) == ResponseParser::Status::failed);
      log += "F:" + p.error();
      return log;
    }
    if (st == ResponseParser::Status::incomplete) {
      FUZZ_CHECK(used == n);
      continue;
    }
    const auto r = p.take();
    FUZZ_CHECK(r.status >= 100 && r.status <= 999);
    FUZZ_CHECK(r.body.size() <= limits.max_body);
    if (!r.encapsulated.empty()) {
      const Section last = r.encapsulated.back().section;
      FUZZ_CHECK(last != Section::req_hdr && last != Section::res_hdr);
      FUZZ_CHECK(r.http_request.has_value() == !r.raw_http_request.empty());
      FUZZ_CHECK(r.http_response.has_value() == !r.raw_http_response.empty());
      if (r.http_request) {
        sightline::exchange::Head again;
        std::string err;
        FUZZ_CHECK(sightline::icap::parse_http_head(sightline::icap::serialize_http_head(*r.http_request, true),
                                                    true, again, &err));
      }
      if (r.http_response) {
        sightline::exchange::Head again;
        std::string err;
        FUZZ_CHECK(sightline::icap::parse_http_head(sightline::icap::serialize_http_head(*r.http_response, false),
                                                    false, again, &err));
        FUZZ_CHECK(again.status == r.http_response->status);
      }
    }
    log += "R" + std::to_string(r.status) + "," + std::to_string(r.headers.size()) + "," +
           std::to_string(r.body.size()) + "," + (r.ieof ? "i" : "-") + "@" + std::to_string(off) + ";";
    p.reset();
    fed_until = off;
  }
  (void)fed_until;
  log += p.started() ? "P" : "E";
  return log;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0];
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  Limits limits;
  if ((mode & 8) != 0) {
    limits.max_icap_head = 128;
    limits.max_http_heads = 96;
    limits.max_body = 64;
    limits.max_chunk_line = 16;
    limits.max_fields = 4;
  }
  const std::string whole = run(in, 0, limits);
  const std::size_t step = mode & 7;
  if (step == 0) return 0;
  FUZZ_CHECK(run(in, step, limits) == whole);
  return 0;
}
