// Strict, incremental HTTP/1.1 message parser (RFC 9112) for one direction of
// a connection: requests from a client, or responses from a server.
//
// It is written for an inline proxy that forwards what it has validated:
// nothing is reported as forwardable before it has been checked, and every
// ambiguity that could let two parties disagree on message boundaries
// (request smuggling) is an error, never a guess.
//
// Ownership: the parser keeps at most one unfinished head or chunk-size line
// (bounded by the limits); body bytes are passed through without copying.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::http {

struct HeaderField {
  std::string name;   // as received (case preserved)
  std::string value;  // leading/trailing whitespace removed
};
using HeaderList = std::vector<HeaderField>;

// Case-insensitive ASCII comparison for header names and tokens.
bool iequals(std::string_view a, std::string_view b);

struct MessageHead {
  // Requests.
  std::string method;
  std::string target;
  // Responses.
  int status = 0;
  std::string reason;

  int version_minor = 1;  // HTTP/1.<minor>
  HeaderList headers;

  // First value of a header (case-insensitive name), or nullptr.
  const std::string* find(std::string_view name) const;
};

// The options listed in a message's Connection (and Proxy-Connection)
// headers; `close` and `keep_alive` report those two.
std::vector<std::string> connection_options(const MessageHead& head, bool* close, bool* keep_alive);
// Whether a message's Connection headers list "close" (without collecting
// the other options: nothing is allocated).
bool connection_close(const MessageHead& head);
// Whether a request's Authorization (`request`) or a response's
// WWW-Authenticate / Proxy-Support uses NTLM or Negotiate, which
// authenticate the connection: it must then never serve another client.
bool connection_bound_auth(const MessageHead& head, bool request);
// One comma-separated field value (a Connection header's) with every
// `token` taken out, the others kept in order ("close, X-T" -> "X-T").
std::string list_without(std::string_view value, std::string_view token);
// Whether such a list has `token` (case-insensitive).
bool list_has(std::string_view value, std::string_view token);

enum class Framing {
  none,            // no body (GET without length, HEAD/204/304 responses, 1xx)
  content_length,  // exactly `content_length` bytes
  chunked,         // chunked transfer coding, may end with trailers
  until_close,     // response body delimited by the connection closing
  tunnel,          // after 101 Switching Protocols or a 2xx answer to CONNECT:
                   // everything that follows is opaque, in both directions
};

struct H1Limits {
  std::size_t max_head = 64 * 1024;      // request/status line + header section
  std::size_t max_trailers = 64 * 1024;  // trailer section of a chunked body
  std::size_t max_chunk_line = 1024;     // chunk-size line incl. extensions
};

class H1Parser {
 public:
  enum class Kind { request, response };

  // Callbacks, in wire order. All spans are valid only during the call.
  class Handler {
   public:
    virtual ~Handler() = default;
    // A complete, validated head. `raw` is its exact wire form (request line
    // or status line through the blank line). For a 1xx response (other than
    // 101) on_message_end follows at once and the final response is parsed
    // next for the same request.
    virtual void on_head(const MessageHead& head, Framing framing,
                         std::uint64_t content_length, std::string_view raw) = 0;
    // Decoded body bytes (chunk framing removed).
    virtual void on_body(std::span<const char> data) = 0;
    // Validated bytes that may be forwarded as they are, in order: heads,
    // body bytes, chunk-size lines, trailers — everything on the wire,
    // never anything unvalidated. A proxy that re-writes heads uses on_head
    // and skips the head bytes here (they come as one call right after
    // on_head).
    virtual void on_forward(std::span<const char> wire) = 0;
    // Trailer fields of a chunked body (possibly empty).
    virtual void on_trailers(const HeaderList& trailers) = 0;
    virtual void on_message_end() = 0;
  };

  struct Error {
    int status = 0;      // 400, 413, 431, 501 or 505 (for the response to send)
    std::string reason;  // human-readable, for logs and error bodies
  };

  H1Parser(Kind kind, Handler& handler, H1Limits limits = {});

  // Response parsers must be told, in order, the method of each request sent
  // on the connection, so HEAD and CONNECT responses are framed correctly.
  void expect_response_to(std::string_view method);

  // Parses `data`. Returns false on a protocol error (see error()); after an
  // error the parser accepts nothing more. Once framing is `tunnel`, bytes are
  // passed to on_forward (and on_body) untouched.
  bool feed(std::span<const char> data);

  // The peer closed its side. Completes an until_close body; returns false
  // (with error()) when a message was cut short.
  bool finish();

  const Error& error() const { return error_; }
  bool in_tunnel() const { return state_ == State::tunnel; }
  // True between messages (nothing of a next message received yet).
  bool idle() const { return state_ == State::head && head_buf_.empty(); }
  // Between messages: frees the reused head and buffer capacity (an idle
  // connection keeps nothing of its last message).
  void trim() {
    if (!idle()) return;
    head_ = MessageHead{};
    std::string().swap(head_buf_);
  }

 private:
  enum class State { head, body_length, chunk_size, chunk_data, chunk_crlf, trailers,
                     body_close, tunnel, failed };

  bool fail(int status, std::string reason);
  bool parse_head(std::string_view raw);
  bool parse_chunk_line(std::string_view line);
  bool parse_trailers(std::string_view raw);
  void end_message();

  Kind kind_;
  Handler& handler_;
  H1Limits limits_;
  State state_ = State::head;
  std::string head_buf_;  // unfinished head, chunk line or trailer section
  MessageHead head_;      // the last head parsed (passed to on_head)
  std::uint64_t remaining_ = 0;
  std::deque<std::string> request_methods_;
  bool informational_ = false;
  Error error_;
};

}  // namespace sightline::http
