// The JSON event feed's line format (docs/hooks.md, "JSON event feed"): one
// JSON object per line, formatted straight into a string (no JSON tree) on
// the consumer's thread. Strings from the wire are escaped, bytes that are
// not UTF-8 become U+FFFD; bodies are base64.
#pragma once

#include "hooks/events.h"

#include <string>
#include <string_view>

namespace sightline::hooks {

// Appends standard base64 (RFC 4648, padded) of `data`.
void append_base64(std::string& out, std::string_view data);

// "YYYY-MM-DDTHH:MM:SS.mmmmmmZ" (UTC, microseconds).
void append_rfc3339(std::string& out, WallClock::time_point t);

// One exchange record as a line ending in '\n'. `body_cap` > 0 adds each
// body's first `body_cap` captured bytes as base64 ("body") and whether the
// body was longer ("body_truncated"); 0 leaves bodies out. `with_headers`
// false leaves out the heads' header lists (the archive keeps the heads
// verbatim in its request and response records). `extra_fields`, if any, are
// more members written last (`"key":value,...`, already JSON).
void format_exchange(std::string& out, const ExchangeRecord& rec, std::size_t body_cap, bool with_headers = true,
                     std::string_view extra_fields = {});

// One connection record as a line ending in '\n'.
void format_connection(std::string& out, const ConnectionRecord& rec);

}  // namespace sightline::hooks
