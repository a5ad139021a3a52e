// Archive writer benchmark: the writer thread's cost per archived exchange,
// without the proxy, the network or the other processes of bench/run.
//
//   archive_bench [exchanges (20000)] [compression: fast|0-9 (fast)] [sync: none|record (none)]
//                 [binary|text|both (both)]
//
// ARCHIVE_BENCH_KEEP=1 keeps the archive directory (printed) instead of
// deleting it.
//
// Appends W2-like exchanges (bench/run's GET /1k through h2load: a small
// request, a 1 KiB application/octet-stream response stored, a ~1 KiB
// metadata record) and a text variant (an 8 KiB HTML response that is
// deflated) to a segment in a temporary directory, in batches of 1,000, and
// prints the median and the slowest batch per exchange. Exchanges are
// written 20 at a time (append_all), like the proxy's group commit. Wall
// times are noisy; under `valgrind --tool=callgrind` the instruction counts per
// exchange are repeatable (use 2,000 exchanges there).
#include "archive/keys.h"
#include "archive/segment.h"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace sightline::archive;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kBatch = 1000;
constexpr std::size_t kGroup = 20;  // divides kBatch

std::string request_block() {
  return "GET /1k HTTP/1.1\r\nhost: localhost:18443\r\nuser-agent: h2load nghttp2/1.52.0\r\naccept: */*\r\n\r\n";
}

std::string response_block(std::string_view type, const std::string& body) {
  return "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 04:00:00 GMT\r\nContent-Type: " +
         std::string(type) + "\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nLast-Modified: Fri, 27 Nov 2026 03:00:00 GMT\r\nConnection: keep-alive\r\n"
         "ETag: \"6566f1a0-400\"\r\nAccept-Ranges: bytes\r\n\r\n" + body;
}

// The shape of what archive::to_archive_record writes (hooks::format_exchange
// plus the archive's fields), about 1 KiB.
std::string metadata(std::uint64_t i) {
  return "{\"type\":\"exchange\",\"time\":\"2026-11-27T04:00:00.123456Z\",\"connection_id\":" + std::to_string(i) +
         ",\"exchange_id\":" + std::to_string(i) +
         ",\"mode\":\"static\",\"client\":\"127.0.0.1:40123\",\"server\":\"127.0.0.1:18443\","
         "\"sni\":\"localhost\",\"user\":\"\",\"groups\":[],\"policy\":{\"rule\":\"default\",\"action\":"
         "\"inspect\",\"archive\":true},\"client_tls\":{\"version\":\"TLSv1.3\",\"cipher\":"
         "\"TLS_AES_256_GCM_SHA384\",\"alpn\":\"http/1.1\"},\"server_tls\":{\"version\":\"TLSv1.3\","
         "\"cipher\":\"TLS_AES_256_GCM_SHA384\",\"alpn\":\"http/1.1\"},\"request\":{\"method\":\"GET\","
         "\"authority\":\"localhost:18443\",\"target\":\"/1k\",\"version\":\"HTTP/1.1\",\"body_bytes\":0},"
         "\"response\":{\"status\":200,\"body_bytes\":1024,\"content_type\":\"application/octet-stream\"},"
         "\"timings_us\":{\"request_head\":12,\"upstream_first_byte\":180,\"response_done\":210},"
         "\"complete\":true,\"upstream_cert_sha256\":"
         "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\",\"upstream_verdict\":"
         "\"verified\",\"request_truncated\":false,\"response_truncated\":false}";
}

struct Result {
  double median_us = 0, max_us = 0, seal_ms = 0;
  std::uint64_t bytes = 0;
};

Result run(const fs::path& dir, std::size_t n, Compression how, SyncMode sync, bool text) {
  std::string key_path = (dir / "bench.key").string(), err;
  if (!fs::exists(key_path) && !keygen(key_path, &err)) {
    std::fprintf(stderr, "keygen: %s\n", err.c_str());
    std::exit(1);
  }
  WriterOptions opts;
  opts.dir = (dir / (text ? "text" : "binary")).string();
  opts.writer_id = "bench";
  opts.sync = sync;
  opts.compression = how;
  opts.max_bytes = 1ull << 40;  // one segment: rotation is not what is measured
  auto writer = SegmentWriter::open(opts, load_signing_key(key_path, &err), nullptr, &err);
  if (!writer) {
    std::fprintf(stderr, "open: %s\n", err.c_str());
    std::exit(1);
  }
  std::mt19937_64 rng(42);
  std::string random_body(1024, '\0');
  for (auto& c : random_body) c = static_cast<char>(rng());
  std::string html;
  while (html.size() < 8192)
    html += "<tr><td class=\"name\">Quarterly report " + std::to_string(html.size()) +
            "</td><td class=\"value\">1,234.56</td></tr>\n";

  ExchangeRecord ex;
  ex.target_uri = "https://localhost:18443/1k";
  ex.request_http = request_block();
  ex.response_http = text ? response_block("text/html", html) : response_block("application/octet-stream", random_body);
  ex.response_store = !text;
  ex.server_ip = "127.0.0.1";

  // Written kGroup at a time, as the proxy's writer thread does with what
  // it gathered during its commit delay.
  std::vector<ExchangeRecord> group(kGroup, ex);
  std::vector<const ExchangeRecord*> ptrs;
  for (const auto& g : group) ptrs.push_back(&g);
  std::vector<double> per_exchange;
  for (std::size_t done = 0; done < n; done += kBatch) {
    auto t0 = Clock::now();
    for (std::size_t i = 0; i < kBatch; i += kGroup) {
      for (std::size_t j = 0; j < kGroup; ++j) group[j].metadata_json = metadata(done + i + j);
      auto res = writer->append_all(ptrs);
      if (res.error) {
        std::fprintf(stderr, "append: %s\n", res.error->c_str());
        std::exit(1);
      }
    }
    per_exchange.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / kBatch);
  }
  auto t_seal = Clock::now();
  if (auto e = writer->seal()) {
    std::fprintf(stderr, "seal: %s\n", e->c_str());
    std::exit(1);
  }
  Result r;
  r.seal_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_seal).count();
  std::sort(per_exchange.begin(), per_exchange.end());
  r.median_us = per_exchange[per_exchange.size() / 2];
  r.max_us = per_exchange.back();
  for (const auto& f : fs::directory_iterator(opts.dir))
    if (f.path().string().ends_with(".warc.gz")) r.bytes += f.file_size();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20000;
  std::string level = argc > 2 ? argv[2] : "fast";
  Compression how;
  if (level != "fast") how = Compression::zlib(std::atoi(level.c_str()));
  std::string sync_text = argc > 3 ? argv[3] : "none";
  auto sync = parse_sync_mode(sync_text);
  std::string variants = argc > 4 ? argv[4] : "both";
  if (n < kBatch || !sync || (variants != "binary" && variants != "text" && variants != "both")) {
    std::fprintf(stderr, "usage: archive_bench [exchanges >= %zu] [fast|0-9] [none|record] [binary|text|both]\n",
                 kBatch);
    return 2;
  }
  n -= n % kBatch;
  char tmpl[] = "/tmp/archive-bench.XXXXXX";
  if (!mkdtemp(tmpl)) {
    std::perror("mkdtemp");
    return 1;
  }
  fs::path dir(tmpl);
  std::printf("%zu exchanges, compression %s, sync %s; per exchange, median of batches of %zu (slowest)\n", n,
              level.c_str(), sync_text.c_str(), kBatch);
  for (bool text : {false, true}) {
    if (variants != "both" && text != (variants == "text")) continue;
    Result r = run(dir, n, how, *sync, text);
    std::printf("  %-44s %7.2f us  (%7.2f)  %6.0f bytes on disk; sealing took %.0f ms (%.2f us per exchange)\n",
                text ? "8 KiB text/html response (deflated)" : "1 KiB octet-stream response (stored)", r.median_us,
                r.max_us, static_cast<double>(r.bytes) / static_cast<double>(n), r.seal_ms,
                r.seal_ms * 1e3 / static_cast<double>(n));
  }
  if (std::getenv("ARCHIVE_BENCH_KEEP")) {  // to inspect or verify what was written
    std::printf("kept %s\n", dir.c_str());
    return 0;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
