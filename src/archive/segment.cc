#include "archive/segment.h"

#include "archive/keys.h"
#include "core/log.h"
#include "hooks/pcap.h"
#include "sightline_build.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

namespace sightline::archive {

namespace {

using hooks::pcap::UniqueFd;

// Records serialized, chained and compressed, not yet written.
struct Batch {
  std::string bytes;
  std::string records_text;  // their lines of the segment's records file
  std::size_t records = 0;
  bool compression_failed = false;
  Digest head{};
  std::uint64_t next_seq = 0;
  Compression how;
  std::string text;  // the record being formatted, reused: no allocations per record
};

// A record is formatted straight into b.text, in the layout of
// serialize_unchained() + add_chain_header(): begin_record(), field()s,
// finish_record().
void begin_record(Batch& b) { b.text.assign("WARC/1.1\r\n"); }

void field(Batch& b, std::string_view name, std::string_view value) {
  b.text += name;
  b.text += ": ";
  b.text += value;
  b.text += "\r\n";
}

// A WARC-Block-Digest or WARC-Payload-Digest field, formatted in place.
void digest_field(Batch& b, std::string_view name, std::string_view data) {
  b.text += name;
  b.text += ": ";
  append_warc_digest(b.text, data);
  b.text += "\r\n";
}

// Ends the header (sequence number, length, chain), adds the block and
// appends the record to the batch as one gzip member.
void finish_record(Batch& b, std::uint64_t segment_bytes, std::string_view id, std::string_view type,
                   std::string_view block, bool store = false) {
  const std::uint64_t seq = b.next_seq++;
  field(b, kSeqHeader, std::to_string(seq));
  field(b, "Content-Length", std::to_string(block.size()));
  // The record digest: the header through its blank line, without the chain
  // line (what record_digest() computes when reading it back).
  const Digest digest = sha256_parts({b.text, "\r\n"});
  b.head = chain_next(b.head, digest);
  b.text += kChainHeader;
  b.text += ": sha256:";
  append_hex(b.text, b.head);
  b.text += "\r\n";
  b.text += "\r\n";
  b.text += block;
  b.text += "\r\n\r\n";
  const std::size_t at = b.bytes.size();
  // Compression fails only without memory; write_batch then fails the batch.
  if (!append_gzip_member(b.bytes, b.text, store ? Compression::stored() : b.how)) b.compression_failed = true;
  append_records_line(b.records_text, seq, segment_bytes + at, b.bytes.size() - at, id, type, digest);
  ++b.records;
}

void http_fields(Batch& b, std::string_view type, const std::string& id, const std::string& date,
                 const ExchangeRecord& ex, const std::string& warcinfo_id, std::string_view block, bool truncated) {
  begin_record(b);
  field(b, "WARC-Type", type);
  field(b, "WARC-Record-ID", id);
  field(b, "WARC-Date", date);
  field(b, "WARC-Target-URI", ex.target_uri);
  field(b, "WARC-Warcinfo-ID", warcinfo_id);
  b.text += "Content-Type: application/http; msgtype=";
  b.text += type;
  b.text += "\r\n";
  digest_field(b, "WARC-Block-Digest", block);
  digest_field(b, "WARC-Payload-Digest", http_payload(block));
  if (truncated) field(b, "WARC-Truncated", "length");
}

}  // namespace

std::optional<SyncMode> parse_sync_mode(std::string_view text) {
  if (text == "record") return SyncMode::record;
  if (text == "interval") return SyncMode::interval;
  if (text == "none") return SyncMode::none;
  return std::nullopt;
}

struct SegmentWriter::State {
  WriterOptions opts;
  tls::EvpPkeyPtr key;
  std::string fingerprint;

  // The writer's chain, across segments.
  Digest head{};
  std::uint64_t next_seq = 1;
  std::uint64_t next_segment_seq = 1;
  std::uint64_t seals = 0;
  std::uint64_t shipped_bytes = 0;  // journal bytes the manifests so far account for
  std::string previous_segment;

  // The open segment.
  UniqueFd fd;
  std::string name;  // sealed name; the file is name + ".open" until sealed
  WallClock::time_point created{};
  std::string created_text;
  Digest chain_start{};
  std::uint64_t bytes = 0;
  std::uint64_t first_seq = 0;
  std::uint64_t records = 0;
  std::string warcinfo_id;
  tls::EvpMdCtxPtr file_hash;
  // The records file, written with each batch and hashed as it grows: a
  // seal only finishes two hashes and signs a small manifest, and the
  // writer keeps no per-record state in memory (a 1 GiB segment holds
  // ~800,000 records).
  UniqueFd records_fd;
  std::uint64_t records_bytes = 0;
  tls::EvpMdCtxPtr records_hash;
  bool needs_truncate = false;  // a failed write may have left a partial exchange
  bool dirty = false;
  WallClock::time_point last_sync{};

  std::string path(std::string_view file) const { return opts.dir + "/" + std::string(file); }
  std::string open_path() const { return path(name) + ".open"; }
  // Like the segment, the records file has ".open" until the seal.
  std::string records_path() const { return path(name) + std::string(kRecordsSuffix) + ".open"; }

  // Buffers of the last batch, kept for the next: a fresh one per batch
  // costs a page fault per 4 KiB (large allocations come from mmap).
  std::string spare_bytes, spare_text, spare_records;

  Batch new_batch() {
    Batch b;
    b.bytes = std::move(spare_bytes);
    b.bytes.clear();
    b.text = std::move(spare_text);
    b.text.clear();
    b.records_text = std::move(spare_records);
    b.records_text.clear();
    b.head = head;
    b.next_seq = next_seq;
    b.how = opts.compression;
    return b;
  }

  void recycle(Batch& b) {
    constexpr std::size_t kKeep = 8u << 20;  // not the memory of a batch of huge bodies
    if (b.bytes.capacity() <= kKeep) spare_bytes = std::move(b.bytes);
    if (b.text.capacity() <= kKeep) spare_text = std::move(b.text);
    if (b.records_text.capacity() <= kKeep) spare_records = std::move(b.records_text);
  }

  // Opens the segment's records file (empty) and starts both hashes.
  std::optional<std::string> begin_segment(std::string segment, WallClock::time_point t) {
    name = std::move(segment);
    created = t;
    created_text = warc_date(t);
    chain_start = head;
    first_seq = next_seq;
    bytes = 0;
    records = 0;
    records_bytes = 0;
    needs_truncate = false;
    dirty = false;
    file_hash.reset(EVP_MD_CTX_new());
    records_hash.reset(EVP_MD_CTX_new());
    if (!file_hash || !records_hash || EVP_DigestInit_ex(file_hash.get(), EVP_sha256(), nullptr) != 1 ||
        EVP_DigestInit_ex(records_hash.get(), EVP_sha256(), nullptr) != 1)
      return "archive: sha256: " + tls::drain_errors();
    UniqueFd f(::open(records_path().c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
    if (!f) return errno_text("create", records_path(), errno);
    records_fd = std::move(f);
    if (auto e = write_all_at(records_fd.get(), kRecordsHeader, 0, records_path())) return e;
    EVP_DigestUpdate(records_hash.get(), kRecordsHeader.data(), kRecordsHeader.size());
    records_bytes = kRecordsHeader.size();
    return std::nullopt;
  }

  void commit(Batch& b) {
    EVP_DigestUpdate(file_hash.get(), b.bytes.data(), b.bytes.size());
    EVP_DigestUpdate(records_hash.get(), b.records_text.data(), b.records_text.size());
    bytes += b.bytes.size();
    records_bytes += b.records_text.size();
    records += b.records;
    head = b.head;
    next_seq = b.next_seq;
    dirty = true;
  }

  // Cuts both files back to what is committed. Errors leave needs_truncate
  // set for the next attempt.
  std::optional<std::string> truncate_uncommitted() {
    if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) return errno_text("truncate", open_path(), errno);
    if (::ftruncate(records_fd.get(), static_cast<off_t>(records_bytes)) != 0)
      return errno_text("truncate", records_path(), errno);
    needs_truncate = false;
    return std::nullopt;
  }

  std::optional<std::string> write_batch(Batch& b) {
    if (b.records == 0 || b.compression_failed) return "archive: compression failed (out of memory)";
    if (needs_truncate) {
      if (auto e = truncate_uncommitted()) return e;
    }
    auto e = write_all_at(fd.get(), b.bytes, bytes, open_path());
    if (!e) e = write_all_at(records_fd.get(), b.records_text, records_bytes, records_path());
    if (e) {
      // Cut the partial exchange now if the disk lets us, else before the next write.
      needs_truncate = true;
      truncate_uncommitted();
      return e;
    }
    commit(b);
    return std::nullopt;
  }

  std::optional<std::string> open_segment(WallClock::time_point now) {
    std::string segment = segment_name(opts.writer_id, now, next_segment_seq);
    std::string p = path(segment) + ".open";
    UniqueFd f(::open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
    if (!f) return errno_text("create", p, errno);
    fd = std::move(f);
    auto began = begin_segment(std::move(segment), now);
    warcinfo_id = new_record_id();
    const std::string info = std::string("software: sightline/") + SIGHTLINE_VERSION +
                             "\r\nformat: WARC File Format 1.1\r\n"
                             "conformsTo: http://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/\r\n"
                             "sightline-writer: " + opts.writer_id +
                             "\r\nsightline-segment-seq: " + std::to_string(next_segment_seq) +
                             "\r\nsightline-previous-segment: " + previous_segment +
                             "\r\nsightline-chain-start: sha256:" + to_hex(chain_start) + "\r\n";
    Batch b = new_batch();
    begin_record(b);
    field(b, "WARC-Type", "warcinfo");
    field(b, "WARC-Record-ID", warcinfo_id);
    field(b, "WARC-Date", created_text);
    field(b, "WARC-Filename", name);
    field(b, "Content-Type", "application/warc-fields");
    digest_field(b, "WARC-Block-Digest", info);
    finish_record(b, 0, warcinfo_id, "warcinfo", info);
    auto e = began ? began : write_batch(b);
    if (!e && !fsync_dir(opts.dir)) e = errno_text("fsync", opts.dir, errno);
    if (e) {
      // Nothing of this segment counts yet: drop it, retry with the same number.
      fd.reset();
      records_fd.reset();
      ::unlink(p.c_str());
      ::unlink(records_path().c_str());
      head = chain_start;
      next_seq = b.next_seq - 1;
      return e;
    }
    return std::nullopt;
  }

  // Adds one exchange's records to `b`, which is written at the end of the
  // segment as it is now.
  void add_exchange(Batch& b, const ExchangeRecord& ex) const {
    const std::string date = warc_date(ex.timestamp);
    std::string req_id = new_record_id(), resp_id = new_record_id(), meta_id = new_record_id();
    const bool has_response = !ex.response_http.empty();
    http_fields(b, "request", req_id, date, ex, warcinfo_id, ex.request_http, ex.request_truncated);
    if (has_response) field(b, "WARC-Concurrent-To", resp_id);
    finish_record(b, bytes, req_id, "request", ex.request_http, ex.request_store);
    if (has_response) {
      http_fields(b, "response", resp_id, date, ex, warcinfo_id, ex.response_http, ex.response_truncated);
      field(b, "WARC-Concurrent-To", req_id);
      if (!ex.server_ip.empty()) field(b, "WARC-IP-Address", ex.server_ip);
      finish_record(b, bytes, resp_id, "response", ex.response_http, ex.response_store);
    }
    const std::string_view meta = ex.metadata_json.empty() ? std::string_view("{}") : ex.metadata_json;
    begin_record(b);
    field(b, "WARC-Type", "metadata");
    field(b, "WARC-Record-ID", meta_id);
    field(b, "WARC-Date", date);
    field(b, "WARC-Target-URI", ex.target_uri);
    field(b, "WARC-Warcinfo-ID", warcinfo_id);
    field(b, "WARC-Concurrent-To", req_id);
    field(b, "Content-Type", "application/json");
    digest_field(b, "WARC-Block-Digest", meta);
    finish_record(b, bytes, meta_id, "metadata", meta);
  }

  // The journal's complete lines past the bytes earlier manifests listed
  // (read from there on, not from the start). The shipper appends whole
  // lines while this reads: a line without its newline waits for the next
  // seal. Never throws: a line it cannot read is skipped, not bound.
  void add_shipped(Manifest& m) const {
    m.has_shipped = true;
    m.shipped_journal_bytes = shipped_bytes;
    UniqueFd jfd(::open(opts.ship_journal.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st {};
    if (!jfd || ::fstat(jfd.get(), &st) != 0) return;
    std::uint64_t from = shipped_bytes;
    if (static_cast<std::uint64_t>(st.st_size) < from) {
      // Replaced or cut by hand: start over rather than skip what it holds.
      log::emit(log::Line(log::Level::warn, "archive_ship_journal_shorter")
                    .str("journal", opts.ship_journal)
                    .num("bytes", static_cast<std::uint64_t>(st.st_size))
                    .num("recorded", from));
      from = 0;
    }
    std::string text(static_cast<std::size_t>(static_cast<std::uint64_t>(st.st_size) - from), '\0');
    std::size_t got = 0;
    while (got < text.size()) {
      ssize_t n = ::pread(jfd.get(), text.data() + got, text.size() - got, static_cast<off_t>(from + got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    text.resize(got);
    std::size_t at = 0, used = 0;
    for (auto nl = text.find('\n'); nl != std::string::npos; at = nl + 1, nl = text.find('\n', at)) {
      used = nl + 1;
      auto j = nlohmann::json::parse(text.begin() + static_cast<std::ptrdiff_t>(at),
                                     text.begin() + static_cast<std::ptrdiff_t>(nl), nullptr, false);
      auto str = [&j](const char* k) {
        auto it = j.find(k);
        return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
      };
      if (j.is_object() && !str("file").empty())
        m.shipped.push_back({str("file"), str("key"), str("version_id"), str("sha256")});
    }
    m.shipped_journal_bytes = from + used;
  }

  std::optional<std::string> do_sync() {
    if (!fd || !dirty) return std::nullopt;
    if (::fdatasync(fd.get()) != 0) return errno_text("fdatasync", open_path(), errno);
    dirty = false;
    last_sync = WallClock::now();
    return std::nullopt;
  }

  std::optional<std::string> do_seal() {
    if (!fd) return std::nullopt;
    if (needs_truncate) {
      if (auto e = truncate_uncommitted()) return e;
    }
    if (::fsync(fd.get()) != 0) return errno_text("fsync", open_path(), errno);
    if (::fsync(records_fd.get()) != 0) return errno_text("fsync", records_path(), errno);
    Manifest m;
    m.segment = name;
    // Finalize copies: a seal that fails later can be retried with the same hashes.
    auto final_hex = [](const tls::EvpMdCtxPtr& ctx) -> std::optional<std::string> {
      Digest d{};
      tls::EvpMdCtxPtr copy(EVP_MD_CTX_new());
      if (!ctx || !copy || EVP_MD_CTX_copy_ex(copy.get(), ctx.get()) != 1 ||
          EVP_DigestFinal_ex(copy.get(), d.data(), nullptr) != 1)
        return std::nullopt;
      return to_hex(d);
    };
    auto file_sha = final_hex(file_hash), records_sha = final_hex(records_hash);
    if (!file_sha || !records_sha) return "archive: sha256: " + tls::drain_errors();
    m.file_sha256 = *file_sha;
    m.records_file = name + std::string(kRecordsSuffix);
    m.records_sha256 = *records_sha;
    m.first_seq = first_seq;
    m.record_count = records;
    m.file_size = bytes;
    m.writer = opts.writer_id;
    m.segment_seq = next_segment_seq;
    m.previous_segment = previous_segment;
    m.chain_start = chain_start;
    m.chain_head = head;
    m.created = created_text;
    m.sealed = warc_date(WallClock::now());
    m.key_fingerprint = fingerprint;
    if (!opts.ship_journal.empty()) add_shipped(m);
    std::string text = manifest_json(m);
    std::string err;
    auto sig = sign_base64(key.get(), text, &err);
    if (!sig) return "archive: " + err;
    // Manifest and signature first: a crash before the rename leaves an open
    // segment whose stale manifest open() discards and writes again.
    if (auto e = write_file_durably(path(name) + std::string(kSignatureSuffix), *sig + "\n")) return e;
    if (auto e = write_file_durably(path(name) + std::string(kManifestSuffix), text)) return e;
    if (::fchmod(records_fd.get(), 0440) != 0) return errno_text("chmod", records_path(), errno);
    if (::fchmod(fd.get(), 0440) != 0) return errno_text("chmod", open_path(), errno);
    if (::rename(records_path().c_str(), path(m.records_file).c_str()) != 0)
      return errno_text("rename", records_path(), errno);
    if (::rename(open_path().c_str(), path(name).c_str()) != 0) return errno_text("rename", open_path(), errno);
    if (!fsync_dir(opts.dir)) return errno_text("fsync", opts.dir, errno);
    log::emit(log::Line(log::Level::info, "archive_segment_sealed")
                  .str("segment", name)
                  .num("records", records)
                  .num("bytes", bytes)
                  .str("chain_head", "sha256:" + to_hex(head)));
    fd.reset();
    records_fd.reset();
    previous_segment = name;
    ++next_segment_seq;
    ++seals;
    if (m.has_shipped) shipped_bytes = m.shipped_journal_bytes;
    name.clear();
    records = 0;
    dirty = false;
    return std::nullopt;
  }

  // Keeps the longest prefix of a crashed writer's open segment whose records
  // are complete and chain on from `head`, and seals it.
  std::optional<std::string> recover(const SegmentName& seg, RecoveryReport& rep) {
    std::string p = path(seg.sealed_name) + ".open";
    rep.open_segment = seg.sealed_name + ".open";
    std::string err;
    std::uint64_t file_size = 0;
    Batch kept = new_batch();
    std::uint64_t kept_bytes = 0;
    std::string first_date;
    {
      auto file = MappedFile::open(p, &err);
      if (!file) return "archive recovery: " + err;
      MemberScan scan = scan_members(file->bytes());
      file_size = scan.file_size;
      rep.cut_reason = scan.tail_error;
      for (const auto& m : scan.members) {
        RecordInfo info = inspect_record(m);
        std::optional<std::string> why;
        if (!info.problem.empty()) why = info.problem;
        else if (info.seq != kept.next_seq) why = "record number out of sequence";
        else why = chain_link_problem(info, kept.head);
        if (why) {
          rep.cut_reason = "record at offset " + std::to_string(m.offset) + ": " + *why;
          break;
        }
        if (first_date.empty()) {
          auto rec = parse_record(m.data, nullptr);
          if (const auto* d = rec ? rec->header("WARC-Date") : nullptr) first_date = *d;
        }
        kept.head = *info.chain;
        ++kept.next_seq;
        append_records_line(kept.records_text, *info.seq, m.offset, m.compressed_length, info.id, info.type,
                            info.digest);
        ++kept.records;
        kept_bytes = m.offset + m.compressed_length;
      }
      rep.cut_records = scan.members.size() - kept.records;
      kept.bytes.assign(file->bytes().substr(0, kept_bytes));
    }
    rep.kept_records = kept.records;
    rep.kept_bytes = kept_bytes;
    rep.cut_bytes = file_size - kept_bytes;
    if (kept.records == 0) {
      if (::unlink(p.c_str()) != 0) return errno_text("unlink", p, errno);
      ::unlink((path(seg.sealed_name) + std::string(kRecordsSuffix) + ".open").c_str());
      rep.removed = true;
      next_segment_seq = seg.seq;
      return std::nullopt;
    }
    UniqueFd f(::open(p.c_str(), O_RDWR | O_CLOEXEC));
    if (!f) return errno_text("open", p, errno);
    if (::ftruncate(f.get(), static_cast<off_t>(kept_bytes)) != 0) return errno_text("truncate", p, errno);
    fd = std::move(f);
    next_segment_seq = seg.seq;
    // The records file is written anew from what the scan kept.
    if (auto e = begin_segment(seg.sealed_name, WallClock::now())) return e;
    if (!first_date.empty()) created_text = first_date;
    if (auto e = write_all_at(records_fd.get(), kept.records_text, records_bytes, records_path())) return e;
    commit(kept);  // the segment's bytes are already in the file: this only adopts them
    if (auto e = do_seal()) return e;
    rep.sealed = true;
    return std::nullopt;
  }
};

SegmentWriter::SegmentWriter(std::unique_ptr<State> st) : st_(std::move(st)) {}
SegmentWriter::~SegmentWriter() = default;

std::unique_ptr<SegmentWriter> SegmentWriter::open(WriterOptions opts, tls::EvpPkeyPtr signing_key,
                                                   RecoveryReport* report, std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = std::move(msg);
    return std::unique_ptr<SegmentWriter>();
  };
  if (!valid_writer_id(opts.writer_id)) return fail("archive writer id '" + opts.writer_id + "': use [A-Za-z0-9_.]");
  if (!signing_key) return fail("archive: no signing key");
  if (::mkdir(opts.dir.c_str(), 0750) != 0 && errno != EEXIST)
    return fail(errno_text("mkdir", opts.dir, errno));
  auto st = std::make_unique<State>();
  st->opts = std::move(opts);
  st->fingerprint = key_fingerprint(signing_key.get());
  st->key = std::move(signing_key);
  st->last_sync = WallClock::now();

  // This writer's files by segment number.
  std::map<std::uint64_t, SegmentName> open_segments;
  std::map<std::uint64_t, std::string> manifests;
  std::uint64_t latest_sealed = 0;
  std::error_code ec;
  namespace fs = std::filesystem;
  for (fs::directory_iterator it(st->opts.dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string n = it->path().filename().string();
    std::string_view base = n;
    bool is_manifest = base.ends_with(kManifestSuffix);
    if (is_manifest) base.remove_suffix(kManifestSuffix.size());
    auto seg = parse_segment_name(base);
    if (!seg || seg->writer != st->opts.writer_id) continue;
    if (seg->open) open_segments[seg->seq] = *seg;
    else if (is_manifest) manifests[seg->seq] = n;
    else latest_sealed = std::max(latest_sealed, seg->seq);
  }
  if (ec) return fail("archive dir " + st->opts.dir + ": " + ec.message());
  // A manifest next to its still-open segment is from a seal that crashed
  // before the rename: recovery writes it again.
  for (const auto& [seq, seg] : open_segments) {
    if (!manifests.count(seq)) continue;
    ::unlink(st->path(seg.sealed_name + std::string(kManifestSuffix)).c_str());
    ::unlink(st->path(seg.sealed_name + std::string(kSignatureSuffix)).c_str());
    ::unlink(st->path(seg.sealed_name + std::string(kRecordsSuffix)).c_str());
    manifests.erase(seq);
  }
  RecoveryReport rep;
  if (!manifests.empty()) {
    const auto& [seq, file] = *manifests.rbegin();
    if (latest_sealed > seq) return fail("archive: sealed segment " + std::to_string(latest_sealed) +
                                         " of writer " + st->opts.writer_id + " has no manifest");
    std::string why = "unreadable";
    auto text = read_text_file(st->path(file));
    auto m = text ? parse_manifest(*text, &why) : std::nullopt;
    if (!m || m->record_count == 0) return fail("archive: cannot resume from " + file + ": " + why);
    st->head = m->chain_head;
    st->next_seq = m->first_seq + m->record_count;
    st->next_segment_seq = seq + 1;
    st->previous_segment = m->segment;
    st->shipped_bytes = m->shipped_journal_bytes;
    rep.resumed_from = file;
  } else if (latest_sealed > 0) {
    return fail("archive: sealed segments of writer " + st->opts.writer_id + " have no manifest");
  }
  for (const auto& [seq, seg] : open_segments) {
    if (auto e = st->recover(seg, rep)) return fail(*e);
    log::emit(log::Line(rep.cut_bytes > 0 ? log::Level::warn : log::Level::info, "archive_recovered")
                  .str("segment", rep.open_segment)
                  .num("kept_records", rep.kept_records)
                  .num("cut_bytes", rep.cut_bytes)
                  .num("cut_records", rep.cut_records)
                  .str("reason", rep.cut_reason)
                  .boolean("sealed", rep.sealed));
  }
  rep.next_record_seq = st->next_seq;
  if (report) *report = rep;
  return std::unique_ptr<SegmentWriter>(new SegmentWriter(std::move(st)));
}

std::optional<std::string> SegmentWriter::append(const ExchangeRecord& ex) {
  const ExchangeRecord* one[] = {&ex};
  return append_all(one).error;
}

SegmentWriter::AppendResult SegmentWriter::append_all(std::span<const ExchangeRecord* const> exchanges) {
  State& s = *st_;
  AppendResult res;
  auto now = WallClock::now();
  if (!s.fd) {
    if (auto e = s.open_segment(now)) {
      res.error = std::move(e);
      return res;
    }
  }
  Batch b = s.new_batch();
  struct Recycle {
    State& s;
    Batch& b;
    ~Recycle() { s.recycle(b); }
  } recycle{s, b};
  std::size_t in_batch = 0;  // exchanges in `b`
  for (const ExchangeRecord* ex : exchanges) {
    const std::size_t bytes_before = b.bytes.size(), records_before = b.records,
                      text_before = b.records_text.size();
    const Digest head_before = b.head;
    const std::uint64_t seq_before = b.next_seq;
    s.add_exchange(b, *ex);
    // Rotate by size: never leave a segment holding only its warcinfo record.
    if (s.records + records_before > 1 && s.bytes + b.bytes.size() > s.opts.max_bytes) {
      b.bytes.resize(bytes_before);
      b.records = records_before;
      b.records_text.resize(text_before);
      b.head = head_before;
      b.next_seq = seq_before;
      if (in_batch > 0) {
        if (auto e = s.write_batch(b)) {
          res.error = std::move(e);
          return res;
        }
        res.written += in_batch;
        in_batch = 0;
      }
      if (auto e = s.do_seal()) {
        res.error = std::move(e);
        return res;
      }
      if (auto e = s.open_segment(now)) {
        res.error = std::move(e);
        return res;
      }
      s.recycle(b);
      b = s.new_batch();
      s.add_exchange(b, *ex);
    }
    ++in_batch;
  }
  if (in_batch > 0) {
    if (auto e = s.write_batch(b)) {
      res.error = std::move(e);
      return res;
    }
    res.written += in_batch;
  }
  if (s.opts.sync == SyncMode::record) res.error = s.do_sync();
  return res;
}

std::optional<std::string> SegmentWriter::sync() { return st_->do_sync(); }

std::optional<std::string> SegmentWriter::maybe_sync(WallClock::time_point now) {
  if (st_->opts.sync != SyncMode::interval || now - st_->last_sync < st_->opts.sync_interval) return std::nullopt;
  return st_->do_sync();
}

std::optional<std::string> SegmentWriter::maybe_rotate(WallClock::time_point now) {
  if (!st_->fd || st_->records <= 1 || now - st_->created < st_->opts.max_age) return std::nullopt;
  return st_->do_seal();
}

std::optional<std::string> SegmentWriter::seal() { return st_->do_seal(); }

std::string SegmentWriter::current_segment() const { return st_->fd ? st_->name + ".open" : std::string(); }
Digest SegmentWriter::chain_head() const { return st_->head; }
std::uint64_t SegmentWriter::next_record_seq() const { return st_->next_seq; }
std::uint64_t SegmentWriter::seals() const { return st_->seals; }

}  // namespace sightline::archive
