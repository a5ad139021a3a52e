// Fixtures shared by the archive unit tests: a temporary archive with its
// key, sample exchanges, and helpers to rearrange segments as a tamperer would.
#pragma once

#include "archive/format.h"
#include "archive/keys.h"
#include "archive/segment.h"
#include "archive/verify.h"
#include "archive/warc.h"

#include <doctest/doctest.h>

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace archive_fixtures {

using namespace sightline;
using namespace sightline::archive;
namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/sightline-archive-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Sealed files are 0440: a tamperer replaces them (the directory is writable).
inline void write_file(const fs::path& p, std::string_view data) {
  fs::remove(p);
  std::ofstream out(p, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

inline ExchangeRecord sample_exchange(int i, std::size_t body_size = 40) {
  exchange::Head req;
  req.method = "POST";
  req.target = "/pay/" + std::to_string(i);
  req.version = "HTTP/2";
  req.authority = "bank.example";
  req.headers = {{"content-type", "application/x-www-form-urlencoded"}};
  exchange::Head resp;
  resp.status = 200;
  resp.version = "HTTP/1.1";
  resp.reason = "OK";
  resp.headers = {{"Content-Type", "text/plain"}};
  ExchangeRecord ex;
  ex.target_uri = "https://bank.example/pay/" + std::to_string(i);
  ex.request_http = http_request_block(req, "amount=" + std::to_string(i) + std::string(body_size, 'x'));
  ex.response_http = http_response_block(resp, "accepted " + std::to_string(i));
  ex.server_ip = "192.0.2.7";
  ex.request_truncated = i % 2 == 1;
  ex.metadata_json = nlohmann::json({{"user", "alice"}, {"client", "10.0.0.1:50000"}, {"rule", "payments"}, {"exchange", i}}).dump();
  return ex;
}

struct Archive {
  TempDir tmp;
  fs::path dir = tmp.path / "archive";
  fs::path key = tmp.path / "archive.key";
  tls::EvpPkeyPtr verify_key;

  Archive() {
    std::string err;
    REQUIRE_MESSAGE(keygen(key.string(), &err), err);
    verify_key = load_verify_key(key.string() + ".pub", &err);
    REQUIRE_MESSAGE(verify_key, err);
  }

  std::unique_ptr<SegmentWriter> open(WriterOptions opts = {}, RecoveryReport* rep = nullptr) {
    opts.dir = dir.string();
    if (opts.writer_id.empty()) opts.writer_id = "w1";
    std::string err;
    auto writer = SegmentWriter::open(opts, load_signing_key(key.string(), &err), rep, &err);
    REQUIRE_MESSAGE(writer, err);
    return writer;
  }

  void write(SegmentWriter& w, int from, int to) {
    for (int i = from; i < to; ++i) {
      auto e = w.append(sample_exchange(i));
      REQUIRE_MESSAGE(!e, *e);
    }
  }

  // `exchanges` exchanges by a fresh writer, sealed; the sealed segments.
  std::vector<fs::path> write_sealed(const WriterOptions& opts, int exchanges) {
    auto w = open(opts);
    write(*w, 0, exchanges);
    REQUIRE(!w->seal());
    return files(".warc.gz");
  }

  Report verify() {
    std::string err;
    auto r = verify_archive(dir.string(), verify_key.get(), &err);
    REQUIRE_MESSAGE(r, err);
    return *r;
  }

  std::vector<fs::path> files(std::string_view suffix) const {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().filename().string().ends_with(suffix)) out.push_back(e.path());
    }
    std::sort(out.begin(), out.end());
    return out;
  }
};

// About four exchanges a segment.
inline WriterOptions small_segments() {
  WriterOptions opts;
  opts.max_bytes = 2000;
  opts.sync = SyncMode::none;
  return opts;
}

inline std::string describe(const Report& r) {
  std::string out;
  for (const auto& f : r.findings) out += format_finding(f) + "\n";
  return out;
}

inline void expect_intact(const Report& r) {
  INFO(describe(r));
  CHECK(r.intact());
}

// Exactly one problem, of this kind, about this record (if given).
inline void expect_single(const Report& r, FindingKind kind, std::optional<std::uint64_t> seq = std::nullopt) {
  INFO(describe(r));
  REQUIRE(r.problems() == 1);
  auto it = std::find_if(r.findings.begin(), r.findings.end(), [](const Finding& f) { return f.problem(); });
  CHECK(it->kind == kind);
  if (seq) CHECK(it->seq == seq);
}

// The compressed members of a segment, to rearrange as a tamperer would.
inline std::vector<std::string> members_of(const std::string& file) {
  MemberScan scan = scan_members(file);
  REQUIRE(scan.complete());
  std::vector<std::string> out;
  for (const auto& m : scan.members) out.push_back(file.substr(m.offset, m.compressed_length));
  return out;
}

inline std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += p;
  return out;
}

}  // namespace archive_fixtures
