// Strict parser for the explicit proxy's request head ("CONNECT host:port").
// Incremental: call parse() with everything received so far.
#pragma once

#include "net/address.h"

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sightline::net {

struct ProxyRequest {
  std::string method;
  std::string target;  // request-target as sent
  HostPort authority;  // parsed target (CONNECT only)
  int version_minor = 1;
  std::vector<std::pair<std::string, std::string>> headers;
  std::size_t head_bytes = 0;  // bytes consumed, CRLFCRLF included
};

enum class ParseStatus { need_more, done, error };

struct ParseResult {
  ParseStatus status = ParseStatus::need_more;
  int http_status = 0;  // on error: 400, 405, 431, 505
  std::string reason;   // on error: for the log and the response body
};

// Parses `data` (the start of the connection). On done, `out` is filled; a
// method other than CONNECT is reported as error 405 after the whole head has
// been validated, so the client gets a precise answer.
ParseResult parse_proxy_request(std::string_view data, std::size_t max_head, ProxyRequest& out);

}  // namespace sightline::net
