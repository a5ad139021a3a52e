// libFuzzer target for the HTTP/1.1 parser.
//
// Input: one mode byte, then the byte stream of one connection direction.
//   bit 0     0 = request parser, 1 = response parser
//   bits 1-3  how the stream is cut into feed() calls (see pieces())
//   bit 4     tiny limits, so the size checks are reached
//   bits 5-7  request methods announced to a response parser (kMethods)
//
// The stream is parsed twice, once in a single feed() and once cut up, and
// both runs must agree exactly. Each run also checks the Handler contract:
// on_forward only ever carries the next bytes of the input, the head comes as
// one call right after on_head, Content-Length bodies have their length,
// nothing is reported after an error, and a clean finish() means every byte
// was forwarded.
#include "fuzz_check.h"
#include "http/h1_parser.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

using sightline::http::Framing;
using sightline::http::H1Limits;
using sightline::http::H1Parser;
using sightline::http::HeaderList;
using sightline::http::MessageHead;

namespace {

const std::vector<std::vector<std::string_view>> kMethods = {
    {"GET", "GET", "GET", "GET"},
    {"HEAD", "GET", "HEAD", "GET"},
    {"CONNECT", "GET"},
    {"POST", "HEAD", "GET"},
    {"GET", "CONNECT"},
    {},
    {"HEAD", "HEAD"},
    {"OPTIONS", "GET", "HEAD", "GET"},
};

class Checker : public H1Parser::Handler {
 public:
  explicit Checker(std::string_view input) : input_(input) {}

  // Split-independent record of what happened, compared between runs.
  std::string log;
  std::size_t forwarded = 0;
  bool failed = false;  // set by the driver once feed() or finish() said no

  void on_head(const MessageHead& h, Framing f, std::uint64_t cl, std::string_view raw) override {
    FUZZ_CHECK(!failed);
    FUZZ_CHECK(!head_pending_);
    close_body();
    FUZZ_CHECK(raw.size() >= 4 && raw.substr(raw.size() - 4) == "\r\n\r\n");
    FUZZ_CHECK(forwarded + raw.size() <= input_.size());
    FUZZ_CHECK(std::memcmp(input_.data() + forwarded, raw.data(), raw.size()) == 0);
    FUZZ_CHECK(h.method.empty() == (h.status != 0));
    FUZZ_CHECK(h.version_minor == 0 || h.version_minor == 1);
    for (const auto& field : h.headers) FUZZ_CHECK(!field.name.empty());
    framing_ = f;
    length_ = cl;
    body_bytes_ = 0;
    head_pending_ = raw.size();
    log += "H" + std::to_string(static_cast<int>(f)) + "," + std::to_string(cl) + "," + h.method + "," +
           std::to_string(h.status) + "," + std::to_string(h.headers.size()) + "@" +
           std::to_string(forwarded) + ";";
  }
  void on_body(std::span<const char> d) override {
    FUZZ_CHECK(!failed);
    FUZZ_CHECK(!head_pending_);
    FUZZ_CHECK(!d.empty());
    FUZZ_CHECK(framing_ == Framing::content_length || framing_ == Framing::chunked ||
               framing_ == Framing::until_close || framing_ == Framing::tunnel);
    body_bytes_ += d.size();
    body_.append(d.data(), d.size());
  }
  void on_forward(std::span<const char> w) override {
    FUZZ_CHECK(!failed);
    FUZZ_CHECK(!w.empty());
    if (head_pending_) {
      FUZZ_CHECK(w.size() == head_pending_);
      head_pending_ = 0;
    }
    FUZZ_CHECK(forwarded + w.size() <= input_.size());
    FUZZ_CHECK(std::memcmp(input_.data() + forwarded, w.data(), w.size()) == 0);
    forwarded += w.size();
  }
  void on_trailers(const HeaderList& t) override {
    FUZZ_CHECK(!failed);
    FUZZ_CHECK(!head_pending_);
    FUZZ_CHECK(framing_ == Framing::chunked);
    close_body();
    log += "T" + std::to_string(t.size()) + ";";
  }
  void on_message_end() override {
    FUZZ_CHECK(!failed);
    FUZZ_CHECK(!head_pending_);
    FUZZ_CHECK(framing_ != Framing::tunnel);
    if (framing_ == Framing::content_length) FUZZ_CHECK(body_bytes_ == length_);
    if (framing_ == Framing::none) FUZZ_CHECK(body_bytes_ == 0);
    close_body();
    log += "E@" + std::to_string(forwarded) + ";";
  }
  void close_body() {
    if (!body_.empty()) log += "B" + body_ + ";";
    body_.clear();
  }

 private:
  std::string_view input_;
  std::size_t head_pending_ = 0;
  Framing framing_ = Framing::none;
  std::uint64_t length_ = 0;
  std::uint64_t body_bytes_ = 0;
  std::string body_;
};

// Piece sizes for a split pattern.
std::vector<std::size_t> pieces(unsigned pattern, std::string_view in) {
  std::vector<std::size_t> out;
  auto fixed = [&](std::size_t step) {
    for (std::size_t off = 0; off < in.size(); off += step) out.push_back(std::min(step, in.size() - off));
  };
  switch (pattern) {
    case 0: out.push_back(in.size()); break;
    case 1: fixed(1); break;
    case 2: fixed(2); break;
    case 3: fixed(3); break;
    case 4: fixed(7); break;
    case 5: {  // pseudo-random, but reproducible from the input
      std::uint32_t x = static_cast<std::uint32_t>(in.size()) * 2654435761u + 1;
      for (std::size_t off = 0; off < in.size();) {
        x = x * 1664525u + 1013904223u;
        const std::size_t n = std::min<std::size_t>(1 + (x >> 24) % 24, in.size() - off);
        out.push_back(n);
        off += n;
      }
      break;
    }
    case 6: {  // cut right after every CR: the CR/LF pair straddles feeds
      std::size_t start = 0;
      for (std::size_t i = 0; i < in.size(); ++i)
        if (in[i] == '\r') {
          out.push_back(i + 1 - start);
          start = i + 1;
        }
      if (start < in.size()) out.push_back(in.size() - start);
      break;
    }
    default:  // two halves
      out.push_back(in.size() / 2);
      out.push_back(in.size() - in.size() / 2);
      break;
  }
  return out;
}

struct Outcome {
  bool fed = false;
  bool finished = false;
  int status = 0;
  std::string log;
  std::size_t forwarded = 0;
  bool tunnel = false;
};

Outcome run(std::uint8_t mode, std::string_view in, unsigned pattern) {
  const bool response = (mode & 1) != 0;
  H1Limits limits;
  if ((mode & 0x10) != 0) {
    limits.max_head = 256;
    limits.max_trailers = 128;
    limits.max_chunk_line = 32;
  }
  Checker checker(in);
  H1Parser parser(response ? H1Parser::Kind::response : H1Parser::Kind::request, checker, limits);
  for (auto m : kMethods[mode >> 5]) parser.expect_response_to(m);

  Outcome o;
  o.fed = true;
  std::size_t off = 0;
  for (std::size_t n : pieces(pattern, in)) {
    if (n == 0) continue;
    const bool ok = parser.feed({in.data() + off, n});
    off += n;
    if (!ok) {
      o.fed = false;
      break;
    }
  }
  checker.failed = !o.fed;
  if (o.fed) {
    o.finished = parser.finish();
    checker.failed = !o.finished;
    if (o.finished) FUZZ_CHECK(checker.forwarded == in.size());
  } else {
    FUZZ_CHECK(!parser.feed({in.data(), in.size()}));  // stays failed, reports nothing
    FUZZ_CHECK(!parser.finish());
  }
  if (!o.fed || !o.finished) {
    const int s = parser.error().status;
    FUZZ_CHECK(!parser.error().reason.empty());
    if (response)
      FUZZ_CHECK(s == 502);
    else
      FUZZ_CHECK(s == 400 || s == 413 || s == 431 || s == 501 || s == 505);
    o.status = s;
  }
  checker.close_body();
  o.log = std::move(checker.log);
  o.forwarded = checker.forwarded;
  o.tunnel = parser.in_tunnel();
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0];
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  const unsigned pattern = (mode >> 1) & 7;

  const Outcome whole = run(mode, in, 0);
  if (pattern == 0) return 0;
  const Outcome split = run(mode, in, pattern);
  FUZZ_CHECK(split.fed == whole.fed);
  FUZZ_CHECK(split.finished == whole.finished);
  FUZZ_CHECK(split.status == whole.status);
  FUZZ_CHECK(split.log == whole.log);
  FUZZ_CHECK(split.forwarded == whole.forwarded);
  FUZZ_CHECK(split.tunnel == whole.tunnel);
  return 0;
}
