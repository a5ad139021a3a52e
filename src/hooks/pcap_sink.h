// Decrypted PCAP (issue 8): a hook Sink that shows every intercepted
// connection as a plaintext TCP connection (synthetic Ethernet/IP/TCP, see
// pcap.h) in rotating capture files and/or a live PCAP-over-IP stream.
//
// Files are named sightline-YYYYMMDDTHHMMSSZ-NNNN.pcapng (or .pcap) after the
// UTC time of their first packet, created 0600 (they hold decrypted
// plaintext), and only opened when there is a packet to write. Writes go
// through a buffer flushed on on_tick(), rotation and on_stop(). A write error
// is counted and logged (event "pcap_error", once until writing works again);
// packets are dropped for a second before the next attempt, never retried in
// a loop.
#pragma once

#include "hooks/events.h"
#include "hooks/pcap.h"
#include "hooks/pcap_over_ip.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

namespace sightline::hooks {

struct PcapOptions {
  std::string dir;  // capture directory (created 0700 if missing); empty: no files
  pcap::Format format = pcap::Format::pcapng;
  pcap::TsResolution ts_resolution = pcap::TsResolution::micro;  // files only
  std::uint64_t max_file_bytes = 256ULL << 20;        // rotate before exceeding; 0: no limit
  std::chrono::seconds max_file_age{3600};            // rotate after; 0: no limit
  std::size_t max_files = 0;                          // delete oldest capture files beyond; 0: keep all
  pcap::PortMap port_map;                             // server port shown as, e.g. {443, 80}
  std::string over_ip_listen;                         // "IP:PORT" / "[IPv6]:PORT"; empty: off
  std::size_t reader_backlog_bytes = 4 << 20;         // per PCAP-over-IP reader, then dropped
  std::size_t max_flows = 65536;                      // open connections tracked; oldest reset beyond
};

class PcapSink final : public Sink {
 public:
  // Null with *error set if the directory cannot be created or the
  // PCAP-over-IP address cannot be bound.
  static std::unique_ptr<PcapSink> create(PcapOptions opts, std::string* error);
  ~PcapSink() override;
  PcapSink(const PcapSink&) = delete;
  PcapSink& operator=(const PcapSink&) = delete;

  std::string_view name() const override { return "pcap"; }
  void on_stream(const StreamEvent& ev) override;
  void on_tick(WallClock::time_point now) override;
  void on_stop() override;

  // Counters, readable from any thread.
  std::uint64_t packets() const { return packets_.load(std::memory_order_relaxed); }
  std::uint64_t bytes_written() const { return bytes_written_.load(std::memory_order_relaxed); }
  std::uint64_t files_opened() const { return files_opened_.load(std::memory_order_relaxed); }
  std::uint64_t write_errors() const { return write_errors_.load(std::memory_order_relaxed); }
  std::uint64_t readers_dropped() const;
  std::uint64_t flows_evicted() const { return flows_evicted_.load(std::memory_order_relaxed); }
  // The bound PCAP-over-IP port (useful with port 0), 0 when off.
  std::uint16_t over_ip_port() const;

 private:
  class FileWriter;
  struct Flow {
    pcap::TcpFlowEncoder enc;
    std::list<std::uint64_t>::iterator lru;
  };
  explicit PcapSink(PcapOptions opts);
  void emit_frame(WallClock::time_point ts, std::span<const std::uint8_t> frame);
  Flow& flow_for(const StreamEvent& ev);

  PcapOptions opts_;
  std::unique_ptr<FileWriter> file_;
  std::unique_ptr<pcap::PcapOverIp> over_ip_;
  std::chrono::steady_clock::time_point next_reader_poll_{};
  pcap::FrameFn frame_fn_;
  std::string record_;  // scratch
  std::unordered_map<std::uint64_t, Flow> flows_;
  std::list<std::uint64_t> lru_;  // least recently active first
  bool stopped_ = false;

  std::atomic<std::uint64_t> packets_{0};
  std::atomic<std::uint64_t> bytes_written_{0};
  std::atomic<std::uint64_t> files_opened_{0};
  std::atomic<std::uint64_t> write_errors_{0};
  std::atomic<std::uint64_t> flows_evicted_{0};
};

}  // namespace sightline::hooks
