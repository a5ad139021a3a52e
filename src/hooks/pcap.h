// Decrypted PCAP building blocks (issue 8): a synthetic TCP flow encoder that
// turns an intercepted connection's plaintext into Ethernet/IP/TCP frames, and
// the PCAP-NG and classic pcap record formats. libpcap cannot write pcapng, so
// both formats are produced here.
#pragma once

#include "hooks/events.h"

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>

namespace sightline::hooks::pcap {

// Owns one file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// RFC 1071 Internet checksum of `data` (odd length padded with a zero byte),
// `initial` being a partial sum carried in (e.g. of a pseudo-header).
std::uint16_t internet_checksum(std::span<const std::uint8_t> data, std::uint32_t initial = 0);

enum class Format : std::uint8_t { pcapng, pcap };
enum class TsResolution : std::uint8_t { micro, nano };

// Large enough for the biggest frame the encoder builds (64 KiB segments).
inline constexpr std::uint32_t kSnapLen = 262144;
// Largest TCP payload per segment: fits the IPv4 total length field with
// 20-byte IP and TCP headers (and so IPv6's payload length too).
inline constexpr std::size_t kMaxSegment = 65535 - 20 - 20;

// File (or stream) header: pcapng SHB + one Ethernet IDB, or the classic pcap
// global header (magic 0xa1b2c3d4 for µs, 0xa1b23c4d for ns), host byte order.
void append_header(std::string& out, Format format, TsResolution res);
// One packet: a pcapng Enhanced Packet Block or a classic pcap record.
void append_record(std::string& out, Format format, TsResolution res, WallClock::time_point ts,
                   std::span<const std::uint8_t> frame);

// Receives each synthesized Ethernet II frame.
using FrameFn = std::function<void(WallClock::time_point ts, std::span<const std::uint8_t> frame)>;
// Server port → port shown in the capture (e.g. 443 → 80 so tools use their
// HTTP dissectors on the plaintext).
using PortMap = std::map<std::uint16_t, std::uint16_t>;

// The TCP state of one synthetic connection: sequence numbers, IP ids and the
// addresses as they appear on the wire. Cheap to keep one per open flow.
// Initial sequence numbers are derived from conn_id (stable across runs);
// MACs are locally administered and derived from the IP address.
class TcpFlowEncoder {
 public:
  TcpFlowEncoder(const FlowInfo& flow, const PortMap& port_map);

  // SYN, SYN-ACK, ACK.
  void open(WallClock::time_point ts, const FrameFn& out);
  // PSH/ACK segments of at most kMaxSegment bytes from the sending side, each
  // acknowledged by a pure ACK from the receiver.
  void data(FlowDir dir, std::string_view bytes, WallClock::time_point ts, const FrameFn& out);
  // clean: FIN/ACK from the client, FIN/ACK from the server, final ACK;
  // otherwise a RST/ACK from the client.
  void close(bool clean, WallClock::time_point ts, const FrameFn& out);
  // RST from the client (used when a flow's state must be dropped early).
  void abort(WallClock::time_point ts, const FrameFn& out) { close(false, ts, out); }

  std::uint32_t initial_seq(FlowDir sender) const;

 private:
  struct End {
    std::uint8_t addr[16]{};  // IPv4 uses the first 4 bytes
    std::uint8_t mac[6]{};
    std::uint16_t port = 0;
    std::uint32_t isn = 0;
    std::uint32_t next_seq = 0;
    std::uint16_t ip_id = 0;
  };
  void segment(int from, std::uint8_t flags, std::span<const std::uint8_t> payload,
               WallClock::time_point ts, const FrameFn& out);

  bool v6_ = false;
  End ends_[2];  // 0: client, 1: server
};

}  // namespace sightline::hooks::pcap
