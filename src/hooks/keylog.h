// TLS key logs in the NSS key log format (SSLKEYLOGFILE, RFC 9850) for the
// client leg and the upstream leg, each to its own file. Off by default: a
// key log decrypts every recorded connection, so it is meant for diagnostics
// only, and turning it on is logged loudly at startup.
//
// OpenSSL hands each line (TLS 1.3 *_TRAFFIC_SECRET lines, TLS 1.2
// CLIENT_RANDOM) to a context-wide callback on the worker thread; the line is
// queued and a writer thread appends it, so a slow disk never stalls a
// handshake. Files are created 0600 and written with O_APPEND, whole lines
// per write, so concurrent readers never see half a line.
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sightline::hooks {

class KeylogFile {
 public:
  // Opens (creating 0600) or fails with a reason.
  static std::unique_ptr<KeylogFile> open(const std::string& path, std::string* error);
  ~KeylogFile();
  KeylogFile(const KeylogFile&) = delete;
  KeylogFile& operator=(const KeylogFile&) = delete;

  // Any thread; never blocks on the disk. Lines over the queue cap are
  // dropped and counted.
  void append(std::string_view line);
  // Writes what is queued and joins the writer.
  void stop();

  const std::string& path() const { return path_; }
  std::uint64_t lines() const { return lines_.load(std::memory_order_relaxed); }
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  KeylogFile(std::string path, int fd);
  void run();

  std::string path_;
  int fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  bool stopping_ = false;
  std::atomic<std::uint64_t> lines_{0}, dropped_{0};
  std::thread writer_;
};

// Which key log file (if any) an SSL's lines go to: set per connection, after
// the policy decision, so logging can be limited to chosen rules. Null (the
// default) logs nothing.
void set_keylog(SSL* ssl, KeylogFile* file);

// Installs the callback on a context (once, at startup, when a key log is
// configured for that leg).
void enable_keylog_callback(SSL_CTX* ctx);

}  // namespace sightline::hooks
