// Non-blocking delivery to a live-stream reader (PCAP-over-IP, the event
// feed): a reader that cannot take bytes now keeps them in its own bounded
// buffer; the caller drops readers whose buffer grows past its cap.
#pragma once

#include <cstddef>
#include <string>

namespace sightline::hooks {

// Sends pending[sent..] to `fd` without blocking and advances `sent`; the
// buffer is emptied when all went and compacted past 1 MiB sent. False when
// the reader hung up or the socket failed.
bool send_pending(int fd, std::string& pending, std::size_t& sent);

}  // namespace sightline::hooks
