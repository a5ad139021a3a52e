#include "archive/export.h"

#include "archive/keys.h"
#include "sightline_build.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>

namespace sightline::archive {

namespace {

std::optional<Digest> chain_value(const nlohmann::json& v) {
  return v.is_string() ? parse_sha256_field(v.get<std::string>()) : std::nullopt;
}

// The export's own warcinfo: outside every writer's chain, so seq 0 and a
// chain of its own (from zeros), which lets the usual record checks apply.
ExportRecord warcinfo_record(const ExportOptions& opts, const std::string& file, const ExportResult& r,
                             std::string& bytes) {
  WarcRecord info;
  std::string segments;
  for (const auto& s : r.sources) segments += (segments.empty() ? "" : ", ") + s;
  std::error_code ec;
  auto source = std::filesystem::absolute(opts.dir, ec);
  info.block = std::string("software: sightline/") + SIGHTLINE_VERSION +
               "\r\nformat: WARC File Format 1.1"
               "\r\nconformsTo: http://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/"
               "\r\nsightline-export-source: " + (ec ? opts.dir : source.string()) +
               "\r\nsightline-export-filter: " + opts.filter_json.dump() +
               "\r\nsightline-export-time: " + warc_date(opts.now) +
               "\r\nsightline-export-exchanges: " + std::to_string(r.exchanges) +
               "\r\nsightline-export-segments: " + segments + "\r\n";
  std::string id = new_record_id();
  info.headers = {{"WARC-Type", "warcinfo"},
                  {"WARC-Record-ID", id},
                  {"WARC-Date", warc_date(opts.now)},
                  {"WARC-Filename", file},
                  {"Content-Type", "application/warc-fields"},
                  {"WARC-Block-Digest", warc_digest(info.block)},
                  {std::string(kSeqHeader), "0"}};
  std::string unchained = serialize_unchained(info);
  ExportRecord rec;
  rec.record.seq = 0;
  rec.record.id = id;
  rec.record.type = "warcinfo";
  rec.record.digest = record_digest(unchained);
  rec.record.chain = chain_next(kZeroChain, rec.record.digest);
  rec.chain_prev = kZeroChain;
  bytes = gzip_member(add_chain_header(unchained, rec.record.chain)).value_or(std::string());
  rec.record.length = bytes.size();
  return rec;
}

}  // namespace

std::string export_manifest_json(const ExportManifest& m) {
  nlohmann::ordered_json sources = nlohmann::ordered_json::array();
  for (const auto& s : m.sources)
    sources.push_back({{"segment", s.segment},
                       {"manifest_sha256", s.manifest_sha256},
                       {"chain_start", s.chain_start},
                       {"chain_head", s.chain_head},
                       {"sealed", s.sealed}});
  nlohmann::ordered_json records = nlohmann::ordered_json::array();
  for (const auto& e : m.records) {
    const ManifestRecord& r = e.record;
    records.push_back({{"offset", r.offset},
                       {"length", r.length},
                       {"id", r.id},
                       {"type", r.type},
                       {"source", e.source.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(e.source)},
                       {"seq", r.seq},
                       {"digest", sha256_field(r.digest)},
                       {"chain_prev", sha256_field(e.chain_prev)},
                       {"chain", sha256_field(r.chain)}});
  }
  nlohmann::ordered_json j = {{"format", kExportFormat},
                              {"kind", "export"},
                              {"file", m.file},
                              {"sha256", m.file_sha256},
                              {"size", m.file_size},
                              {"created", m.created},
                              {"source_dir", m.source_dir},
                              {"filter", m.filter},
                              {"key_fingerprint", m.key_fingerprint},
                              {"exchanges", m.exchanges},
                              {"sources", std::move(sources)},
                              {"records", std::move(records)}};
  return j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::optional<ExportManifest> parse_export_manifest(std::string_view text, std::string* why) {
  auto fail = [&](std::string msg) {
    if (why) *why = std::move(msg);
    return std::optional<ExportManifest>();
  };
  auto j = nlohmann::ordered_json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail("export manifest is not JSON");
  try {
    if (j.at("format") != kExportFormat || j.at("kind") != "export") return fail("not an export manifest");
    ExportManifest m;
    m.file = j.at("file").get<std::string>();
    m.file_sha256 = j.at("sha256").get<std::string>();
    m.file_size = j.at("size").get<std::uint64_t>();
    m.created = j.at("created").get<std::string>();
    m.source_dir = j.at("source_dir").get<std::string>();
    m.filter = j.at("filter");
    m.key_fingerprint = j.at("key_fingerprint").get<std::string>();
    m.exchanges = j.at("exchanges").get<std::uint64_t>();
    for (const auto& s : j.at("sources"))
      m.sources.push_back({s.at("segment").get<std::string>(), s.at("manifest_sha256").get<std::string>(),
                           s.at("chain_start").get<std::string>(), s.at("chain_head").get<std::string>(),
                           s.at("sealed").get<std::string>()});
    for (const auto& r : j.at("records")) {
      ExportRecord e;
      e.record.offset = r.at("offset").get<std::uint64_t>();
      e.record.length = r.at("length").get<std::uint64_t>();
      e.record.id = r.at("id").get<std::string>();
      e.record.type = r.at("type").get<std::string>();
      if (!r.at("source").is_null()) e.source = r.at("source").get<std::string>();
      e.record.seq = r.at("seq").get<std::uint64_t>();
      auto d = chain_value(r.at("digest")), p = chain_value(r.at("chain_prev")), c = chain_value(r.at("chain"));
      if (!d || !p || !c) return fail("bad digest in export record " + e.record.id);
      e.record.digest = *d;
      e.chain_prev = *p;
      e.record.chain = *c;
      m.records.push_back(std::move(e));
    }
    return m;
  } catch (const nlohmann::json::exception& e) {
    return fail(std::string("export manifest field: ") + e.what());
  }
}

std::optional<ExportResult> export_archive(const ExportOptions& opts, std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = std::move(msg);
    return std::optional<ExportResult>();
  };
  namespace fs = std::filesystem;
  std::string file = fs::path(opts.out).filename().string();
  if (!file.ends_with(kSealedSuffix) || parse_segment_name(file))
    return fail("--out " + opts.out + ": name it *.warc.gz, unlike a segment (WRITER-TIME-SEQ.warc.gz)");
  if (!opts.signing_key) return fail("export: no signing key");
  if (::access(opts.out.c_str(), F_OK) == 0 || ::access((opts.out + std::string(kManifestSuffix)).c_str(), F_OK) == 0)
    return fail(opts.out + " exists; an export is never overwritten");
  auto found = search(opts.dir, opts.filter, error);
  if (!found) return std::nullopt;
  auto files = segment_files(opts.dir, error);
  if (!files) return std::nullopt;
  // Segment order, then file order: the export keeps the archive's order.
  std::map<std::string, std::size_t> rank;
  for (std::size_t i = 0; i < files->size(); ++i) rank[(*files)[i]] = i;
  auto& hits = found->hits;
  std::stable_sort(hits.begin(), hits.end(), [&](const Hit& a, const Hit& b) {
    if (a.file != b.file) return rank[a.file] < rank[b.file];
    return a.entry.records.front().offset < b.entry.records.front().offset;
  });

  ExportResult result;
  ExportManifest m;
  std::string body;  // the exported members, after the warcinfo
  std::map<std::string, ExportSource> sources;
  std::optional<SealedManifest> sealed;  // of the current hit's segment (hits are grouped by segment)
  for (const Hit& hit : hits) {
    if (parse_segment_name(hit.file)->open) {
      ++result.skipped_open;
      continue;
    }
    if (!sealed || sealed->manifest.segment != hit.file) {
      std::string why;
      sealed = SealedManifest::load(opts.dir, hit.file, opts.signing_key, &why);
      if (!sealed) return fail("refusing to export from " + why + " (run `sightline archive verify`)");
      auto text = read_text_file(opts.dir + "/" + hit.file + std::string(kManifestSuffix));
      const Manifest& m0 = sealed->manifest;
      sources[hit.file] = {hit.file, text ? to_hex(sha256(*text)) : std::string(), sha256_field(m0.chain_start),
                           sha256_field(m0.chain_head), m0.sealed};
      result.sources.push_back(hit.file);
    }
    auto ex = read_exchange(opts.dir, hit, &*sealed, error);
    if (!ex) return std::nullopt;
    if (!ex->integrity.empty())
      return fail("refusing to export exchange " + hit.entry.id + " of " + hit.file + ": " + ex->integrity +
                  " (run `sightline archive verify`)");
    const Manifest& m0 = sealed->manifest;
    for (const ReadRecord& rr : ex->records) {
      std::size_t i = sealed->by_id.at(rr.info.id);  // read_exchange matched every record to the manifest
      ExportRecord e;
      e.record = m0.records[i];
      e.record.offset = body.size();  // relative to the body; shifted below
      e.source = hit.file;
      e.chain_prev = i == 0 ? m0.chain_start : m0.records[i - 1].chain;
      body += rr.compressed;
      m.records.push_back(std::move(e));
      ++result.records;
    }
    ++result.exchanges;
  }
  if (result.exchanges == 0)
    return fail(result.skipped_open ? "only exchanges in open (unsealed) segments match; nothing to export"
                                    : "no exchange matches; nothing written");

  std::string head;
  ExportRecord info = warcinfo_record(opts, file, result, head);
  if (head.empty()) return fail("export: compression failed");
  for (auto& e : m.records) e.record.offset += head.size();
  m.records.insert(m.records.begin(), std::move(info));
  std::string bytes = head + body;
  m.file = file;
  m.file_sha256 = to_hex(sha256(bytes));
  m.file_size = bytes.size();
  m.created = warc_date(opts.now);
  std::error_code ec;
  auto abs = fs::absolute(opts.dir, ec);
  m.source_dir = ec ? opts.dir : abs.string();
  m.filter = opts.filter_json;
  m.key_fingerprint = key_fingerprint(opts.signing_key);
  m.exchanges = result.exchanges;
  for (const auto& name : result.sources) m.sources.push_back(sources[name]);

  std::string text = export_manifest_json(m);
  auto sig = sign_base64(opts.signing_key, text, error);
  if (!sig) return std::nullopt;
  // Records first, then signature and manifest: a crash leaves no manifest
  // vouching for a file that is not complete.
  if (auto e = write_file_durably(opts.out, bytes)) return fail(*e);
  if (auto e = write_file_durably(opts.out + std::string(kSignatureSuffix), *sig + "\n")) return fail(*e);
  if (auto e = write_file_durably(opts.out + std::string(kManifestSuffix), text)) return fail(*e);
  std::string parent = fs::path(opts.out).parent_path().string();
  fsync_dir(parent.empty() ? "." : parent);
  return result;
}

}  // namespace sightline::archive
