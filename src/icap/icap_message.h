// ICAP (RFC 3507) messages: a strict, incremental response parser and the
// request serializer. Pure functions of bytes: no I/O, no libuv, no logging,
// so the parser can be fuzzed alone (tests/fuzz/icap_response_fuzz.cc).
//
// ICAP carries HTTP messages ("encapsulated") after its own header section.
// The `Encapsulated` header gives the offset of each part from the start of
// the encapsulated section: optional HTTP heads (req-hdr, res-hdr) followed
// by exactly one body marker (req-body, res-body, opt-body or null-body).
// Bodies always use the chunked coding; the last chunk of a preview may
// carry the `ieof` extension ("0; ieof") to say the body ended inside it.
//
// Bounds: the ICAP head, the encapsulated HTTP heads, a chunk-size line and
// the decoded body are each capped (Limits); exceeding one is an error with a
// reason, never unbounded growth.
#pragma once

#include "exchange/exchange.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::icap {

enum class Method { options, reqmod, respmod };
const char* method_name(Method m);  // "OPTIONS", "REQMOD", "RESPMOD"

struct Limits {
  std::size_t max_icap_head = 16 * 1024;    // status line + ICAP header section
  std::size_t max_http_heads = 64 * 1024;   // all encapsulated HTTP heads together
  std::size_t max_body = 16 * 1024 * 1024;  // decoded encapsulated body
  std::size_t max_chunk_line = 256;         // chunk-size line with extensions
  std::size_t max_fields = 128;             // fields in one header section
};

// One entry of the Encapsulated header.
enum class Section { req_hdr, res_hdr, req_body, res_body, opt_body, null_body };
const char* section_name(Section s);
struct EncapsulatedPart {
  Section section = Section::null_body;
  std::size_t offset = 0;
};

// Parses an Encapsulated value ("req-hdr=0, res-hdr=137, res-body=296").
// Valid: optional req-hdr, then optional res-hdr, then exactly one body
// marker, in that order; the first offset 0 and offsets strictly increasing
// (a head is never empty). Returns nullopt with `error` set otherwise.
std::optional<std::vector<EncapsulatedPart>> parse_encapsulated(std::string_view value,
                                                                std::string* error);

// Parses one HTTP/1.x head (start line through the blank line, exactly) as
// found in an encapsulated section. Requests in absolute form
// ("GET http://host/p HTTP/1.1") are split into scheme, authority and an
// origin-form target; for origin-form requests `authority` comes from Host.
bool parse_http_head(std::string_view raw, bool request, exchange::Head& out, std::string* error);

// Writes a head in HTTP/1.1 wire form for encapsulation. HTTP/2 heads are
// written as HTTP/1.1 (ICAP encapsulates HTTP/1 messages) and requests get a
// Host field from `authority` if they have none. An origin-form request
// target with a known scheme and authority is written in absolute form, as
// ICAP servers (URL filters) need the full URL.
std::string serialize_http_head(const exchange::Head& head, bool request);

struct Response {
  int status = 0;  // ICAP status: 100, 200, 204, 4xx, 5xx
  std::string reason;
  exchange::Headers headers;  // ICAP header fields, in order
  std::vector<EncapsulatedPart> encapsulated;  // empty when the header was absent
  std::optional<exchange::Head> http_request;   // req-hdr
  std::optional<exchange::Head> http_response;  // res-hdr
  std::string raw_http_request;   // exact wire bytes of req-hdr (empty if none)
  std::string raw_http_response;  // exact wire bytes of res-hdr
  // req_body, res_body or opt_body when a body followed; nullopt for
  // null-body (or no Encapsulated header).
  std::optional<Section> body_section;
  std::string body;   // chunk framing removed
  bool ieof = false;  // the last chunk carried "; ieof"

  // First value of an ICAP header (case-insensitive), or nullptr.
  const std::string* find(std::string_view name) const;
  // False when the server said "Connection: close".
  bool keep_alive() const;
};

// Incremental parser for one ICAP response. Feed bytes as they arrive; once
// it reports `complete`, `consumed` tells how many bytes of the last feed
// belonged to the response (the rest belong to whatever follows). A
// `100 Continue` is a complete response of its own: reset() and go on.
//
// Strictness: status line exactly "ICAP/1.0 SP 3DIGIT SP reason"; CRLF line
// ends only (no bare CR or LF, no NUL, no obsolete folding); field names are
// tokens with no space before the colon; one Encapsulated header, required
// in 200 responses and valid per parse_encapsulated; encapsulated heads must
// fill their sections exactly; chunk sizes are 1-16 hex digits; the only
// chunk extension accepted is `ieof`, on the last chunk; no trailers.
class ResponseParser {
 public:
  enum class Status { incomplete, complete, failed };

  explicit ResponseParser(Limits limits = {});

  Status feed(std::span<const char> data, std::size_t* consumed = nullptr);
  // True once any byte of a response was received (the connection carried
  // something, so a request must not be retried elsewhere).
  bool started() const { return started_; }
  Status status() const;
  const std::string& error() const { return error_; }
  const Response& response() const { return resp_; }
  Response take();
  void reset();

 private:
  enum class State { icap_head, http_heads, chunk_line, chunk_data, chunk_crlf, last_crlf, done, failed };

  Status fail(std::string reason);
  bool reject(std::string reason) {
    fail(std::move(reason));
    return false;
  }
  bool parse_icap_head(std::string_view raw);
  bool parse_http_heads(std::string_view raw);
  bool parse_chunk_line(std::string_view line);

  Limits limits_;
  State state_ = State::icap_head;
  std::string buf_;  // unfinished line, head or heads
  std::size_t heads_len_ = 0;
  std::uint64_t chunk_left_ = 0;
  bool last_chunk_ = false;
  bool started_ = false;
  Response resp_;
  std::string error_;
};

// One ICAP request to serialize.
struct Request {
  Method method = Method::options;
  std::string uri;   // "icap://host:port/service"
  std::string host;  // Host header value ("host:port")
  exchange::Headers headers;  // extra ICAP fields (X-Client-IP, ...)
  const exchange::Head* http_request = nullptr;   // REQMOD, RESPMOD (context)
  const exchange::Head* http_response = nullptr;  // RESPMOD
  std::string_view body;  // empty: null-body
  // Preview size to announce (the service's Preview from OPTIONS), or
  // nullopt for no preview. Ignored without a body.
  std::optional<std::size_t> preview;
  bool allow_204 = true;
};

// The wire form of a request. `first` is sent at once; with a preview it
// ends with the preview's last chunk and `rest` holds the remaining body
// chunks, to be sent only after the server's `100 Continue` (empty when the
// whole body fit in the preview: then `first` ended with "0; ieof").
struct WireRequest {
  std::string first;
  std::string rest;
  bool previewing = false;  // a Preview header was sent and rest is non-empty
};

WireRequest serialize(const Request& r);

// Chunked-body helpers, for callers that will stream bodies.
void append_chunk(std::string& out, std::string_view data);
void append_last_chunk(std::string& out, bool ieof);

}  // namespace sightline::icap
