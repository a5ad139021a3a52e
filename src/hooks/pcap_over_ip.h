// PCAP-over-IP: a TCP listener streaming a live classic pcap (µs) to every
// connected reader (Wireshark `-i TCP@host:port`, Arkime, NetworkMiner, nc).
// Everything runs on the owner's thread with non-blocking sockets: readers are
// accepted when poll() is called, and a reader whose backlog would exceed its
// cap is closed, so a slow reader never blocks the producer.
#pragma once

#include "hooks/pcap.h"

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::hooks::pcap {

class PcapOverIp {
 public:
  // `address` is "IP:PORT" or "[IPv6]:PORT" ("*:PORT" for any IPv4); port 0
  // picks a free one (see local_port()). Returns null and sets *error if the
  // address is invalid or cannot be bound.
  static std::unique_ptr<PcapOverIp> listen(std::string_view address, std::size_t backlog_cap,
                                            std::string* error);
  ~PcapOverIp();
  PcapOverIp(const PcapOverIp&) = delete;
  PcapOverIp& operator=(const PcapOverIp&) = delete;

  // Accepts waiting readers (each gets the pcap global header first, then
  // only packets published afterwards), pushes pending backlogs and forgets
  // readers that hung up. Never blocks.
  void poll();
  // Queues one classic pcap record (µs) for every reader and sends what the
  // sockets take right away.
  void publish(std::string_view record);
  // Closes every reader and the listener.
  void close();

  std::uint16_t local_port() const { return port_; }
  std::size_t readers() const { return readers_.size(); }
  std::uint64_t readers_accepted() const { return accepted_.load(std::memory_order_relaxed); }
  std::uint64_t readers_dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  struct Reader {
    UniqueFd fd;
    std::string pending;  // bytes not yet taken by the socket, from `sent`
    std::size_t sent = 0;
    std::string peer;
  };
  PcapOverIp(UniqueFd fd, std::uint16_t port, std::size_t cap);
  // Sends what the socket takes; false when the reader must be dropped.
  bool push(Reader& r);

  UniqueFd listen_fd_;
  std::uint16_t port_ = 0;
  std::size_t cap_ = 0;
  std::string header_;
  std::vector<Reader> readers_;
  std::atomic<std::uint64_t> accepted_{0};
  std::atomic<std::uint64_t> dropped_{0};
};

}  // namespace sightline::hooks::pcap
