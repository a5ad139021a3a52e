#include "archive/index.h"

#include "archive/verify.h"

#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <map>
#include <unordered_map>

namespace sightline::archive {

namespace {

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string lowered(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}

bool icontains(std::string_view hay, std::string_view needle) {
  if (needle.empty()) return true;
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end(),
                        [](char a, char b) { return lower(a) == lower(b); });
  return it != hay.end();
}

std::string_view first_line(std::string_view block) { return block.substr(0, block.find("\r\n")); }

// "https://user@Host.example:8443/x" -> "host.example"
std::string uri_host(std::string_view uri) {
  std::size_t scheme = uri.find("://");
  std::string_view rest = scheme == std::string_view::npos ? uri : uri.substr(scheme + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (std::size_t at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
  if (rest.starts_with('[')) return lowered(rest.substr(1, rest.find(']') - 1));
  return lowered(rest.substr(0, rest.find(':')));
}

// The metadata's user: a name, or an object with one (the proxy may add groups).
std::string json_text(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("name") && (*it)["name"].is_string()) return (*it)["name"].get<std::string>();
  if (it->is_number()) return it->dump();
  return {};
}

std::int64_t entry_time(const IndexEntry& e) { return parse_time(e.time).value_or(0); }

}  // namespace

SegmentIndex build_index(std::string_view segment, std::string_view bytes) {
  SegmentIndex index;
  index.segment = std::string(segment);
  index.sha256 = to_hex(sha256(bytes));
  index.size = bytes.size();
  std::unordered_map<std::string, std::size_t> by_request;
  MemberScan scan = scan_members(bytes);
  for (const Member& m : scan.members) {
    auto rec = parse_record(m.data, nullptr);
    if (!rec) continue;
    auto field = [&](std::string_view name) {
      const std::string* v = rec->header(name);
      return v ? *v : std::string();
    };
    std::string type = field("WARC-Type");
    IndexedRecord where{type, field("WARC-Record-ID"), 0, m.offset, m.compressed_length};
    where.seq = parse_u64(field(kSeqHeader)).value_or(0);
    if (type == "request") {
      IndexEntry e;
      e.id = where.id;
      e.time = field("WARC-Date");
      e.target = field("WARC-Target-URI");
      e.host = uri_host(e.target);
      std::string_view line = first_line(rec->block);
      e.method = std::string(line.substr(0, line.find(' ')));
      e.records.push_back(std::move(where));
      by_request[e.id] = index.entries.size();
      index.entries.push_back(std::move(e));
      continue;
    }
    auto it = by_request.find(field("WARC-Concurrent-To"));
    if (it == by_request.end()) continue;  // warcinfo, or a record of no exchange here
    IndexEntry& e = index.entries[it->second];
    if (type == "response") {
      std::string_view line = first_line(rec->block);
      std::size_t sp = line.find(' ');
      if (sp != std::string_view::npos) {
        auto code = parse_u64(line.substr(sp + 1, 3));
        if (code) e.status = static_cast<int>(*code);
      }
    } else if (type == "metadata") {
      auto j = nlohmann::json::parse(rec->block, nullptr, false);
      if (j.is_object()) {
        e.user = json_text(j, "user");
        e.client = json_text(j, "client");
      }
    }
    e.records.push_back(std::move(where));
  }
  return index;
}

std::string index_text(const SegmentIndex& index) {
  auto dump = [](const nlohmann::ordered_json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  };
  std::string out = dump({{"format", kIndexFormat},
                          {"segment", index.segment},
                          {"sha256", index.sha256},
                          {"size", index.size},
                          {"exchanges", index.entries.size()}});
  for (const auto& e : index.entries) {
    nlohmann::ordered_json records = nlohmann::ordered_json::array();
    for (const auto& r : e.records)
      records.push_back({{"type", r.type}, {"id", r.id}, {"seq", r.seq}, {"offset", r.offset}, {"length", r.length}});
    out += dump({{"id", e.id},
                 {"time", e.time},
                 {"user", e.user},
                 {"client", e.client},
                 {"host", e.host},
                 {"method", e.method},
                 {"target", e.target},
                 {"status", e.status ? nlohmann::ordered_json(*e.status) : nlohmann::ordered_json()},
                 {"records", std::move(records)}});
  }
  return out;
}

std::optional<SegmentIndex> parse_index(std::string_view text, std::string* why) {
  auto fail = [&](std::string msg) {
    if (why) *why = std::move(msg);
    return std::optional<SegmentIndex>();
  };
  SegmentIndex index;
  bool header = true;
  std::size_t expected = 0;
  try {
    while (!text.empty()) {
      std::size_t nl = text.find('\n');
      if (nl == std::string_view::npos) return fail("index ends inside a line");
      auto j = nlohmann::json::parse(text.substr(0, nl), nullptr, false);
      text.remove_prefix(nl + 1);
      if (!j.is_object()) return fail("index line is not JSON");
      if (header) {
        if (j.at("format") != kIndexFormat) return fail("unknown index format");
        index.segment = j.at("segment").get<std::string>();
        index.sha256 = j.at("sha256").get<std::string>();
        index.size = j.at("size").get<std::uint64_t>();
        expected = j.at("exchanges").get<std::size_t>();
        header = false;
        continue;
      }
      IndexEntry e;
      e.id = j.at("id").get<std::string>();
      e.time = j.at("time").get<std::string>();
      e.user = j.at("user").get<std::string>();
      e.client = j.at("client").get<std::string>();
      e.host = j.at("host").get<std::string>();
      e.method = j.at("method").get<std::string>();
      e.target = j.at("target").get<std::string>();
      if (!j.at("status").is_null()) e.status = j.at("status").get<int>();
      for (const auto& r : j.at("records"))
        e.records.push_back({r.at("type").get<std::string>(), r.at("id").get<std::string>(),
                             r.at("seq").get<std::uint64_t>(), r.at("offset").get<std::uint64_t>(),
                             r.at("length").get<std::uint64_t>()});
      index.entries.push_back(std::move(e));
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(std::string("index field: ") + e.what());
  }
  // A torn write (the sidecar is written by rename, but be strict anyway).
  if (header || index.entries.size() != expected) return fail("index incomplete");
  return index;
}

std::optional<LoadedIndex> load_index(const std::string& dir, const std::string& file, std::string* error) {
  auto seg = parse_segment_name(file);
  if (!seg) {
    if (error) *error = file + ": not a segment name";
    return std::nullopt;
  }
  std::string seg_path = dir + "/" + file;
  std::string idx_path = dir + "/" + seg->sealed_name + std::string(kIndexSuffix);
  LoadedIndex out;
  if (!seg->open) {
    struct stat st {};
    auto idx_text = read_text_file(idx_path);
    auto idx = idx_text ? parse_index(*idx_text, nullptr) : std::nullopt;
    if (idx && ::stat(seg_path.c_str(), &st) == 0 && idx->segment == seg->sealed_name &&
        idx->size == static_cast<std::uint64_t>(st.st_size)) {
      // The manifest names the sealed file's hash: comparing with it costs no
      // read of the segment. The index is derived data either way; show and
      // export check every record against the signed manifest.
      if (peek_manifest_sha256(seg_path + std::string(kManifestSuffix)) == idx->sha256) {
        out.index = std::move(*idx);
        return out;
      }
    }
  }
  auto mapped = MappedFile::open(seg_path, error);
  if (!mapped) return std::nullopt;
  out.index = build_index(seg->sealed_name, mapped->bytes());
  out.index.open = seg->open;
  out.rebuilt = true;
  if (!seg->open) {
    auto sealed_sha = peek_manifest_sha256(seg_path + std::string(kManifestSuffix));
    if (sealed_sha && *sealed_sha != out.index.sha256)
      out.warning = file + ": segment differs from its manifest; run `sightline archive verify`";
    if (auto e = write_file_durably(idx_path, index_text(out.index), 0640))
      out.warning += (out.warning.empty() ? "" : "; ") + ("index not saved: " + *e);
  }
  return out;
}

std::optional<std::vector<std::string>> segment_files(const std::string& dir, std::string* error) {
  namespace fs = std::filesystem;
  std::map<std::pair<std::string, std::uint64_t>, std::string> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string n = it->path().filename().string();
    auto seg = parse_segment_name(n);
    if (seg) found[{seg->writer, seg->seq}] = n;
  }
  if (ec) {
    if (error) *error = dir + ": " + ec.message();
    return std::nullopt;
  }
  std::vector<std::string> out;
  for (auto& [k, n] : found) out.push_back(std::move(n));
  return out;
}

std::optional<std::int64_t> parse_time(std::string_view t, bool end_of_day) {
  auto num = [&](std::size_t at, std::size_t len) -> std::optional<int> {
    if (at + len > t.size()) return std::nullopt;
    auto v = parse_u64(t.substr(at, len));
    if (!v) return std::nullopt;
    return static_cast<int>(*v);
  };
  auto y = num(0, 4), mo = num(5, 2), d = num(8, 2);
  if (!y || !mo || !d || t[4] != '-' || t[7] != '-' || *mo < 1 || *mo > 12 || *d < 1 || *d > 31) return std::nullopt;
  std::tm tm{};
  tm.tm_year = *y - 1900;
  tm.tm_mon = *mo - 1;
  tm.tm_mday = *d;
  if (t.size() == 10) {
    std::int64_t secs = static_cast<std::int64_t>(timegm(&tm)) + (end_of_day ? 86400 : 0);
    return secs * 1000000;
  }
  if (t.size() < 20 || (t[10] != 'T' && t[10] != 't' && t[10] != ' ') || t[13] != ':' || t[16] != ':')
    return std::nullopt;
  auto h = num(11, 2), mi = num(14, 2), s = num(17, 2);
  if (!h || !mi || !s || *h > 23 || *mi > 59 || *s > 60) return std::nullopt;
  tm.tm_hour = *h;
  tm.tm_min = *mi;
  tm.tm_sec = *s;
  std::int64_t micros = 0;
  std::size_t pos = 19;
  if (t[pos] == '.') {
    std::size_t start = ++pos;
    while (pos < t.size() && t[pos] >= '0' && t[pos] <= '9') ++pos;
    if (pos == start) return std::nullopt;
    std::string frac(t.substr(start, std::min<std::size_t>(pos - start, 6)));
    frac.resize(6, '0');
    micros = static_cast<std::int64_t>(*parse_u64(frac));
  }
  std::int64_t offset = 0;
  std::string_view zone = t.substr(pos);
  if (zone == "Z" || zone == "z") {
  } else if (zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':') {
    auto oh = parse_u64(zone.substr(1, 2)), om = parse_u64(zone.substr(4, 2));
    if (!oh || !om) return std::nullopt;
    offset = static_cast<std::int64_t>(*oh * 3600 + *om * 60) * (zone[0] == '+' ? 1 : -1);
  } else {
    return std::nullopt;
  }
  return (static_cast<std::int64_t>(timegm(&tm)) - offset) * 1000000 + micros;
}

bool host_matches(std::string_view host, std::string_view wanted) {
  std::string h = lowered(host), w = lowered(wanted);
  while (!w.empty() && w.back() == '.') w.pop_back();
  if (w.empty()) return true;
  return h == w || (h.size() > w.size() && h.ends_with(w) && h[h.size() - w.size() - 1] == '.');
}

bool index_matches(const IndexEntry& e, const Filter& f) {
  if (!f.user.empty() && e.user != f.user) return false;
  if (!f.host.empty() && !host_matches(e.host, f.host)) return false;
  if (f.status && e.status != f.status) return false;
  if (f.since || f.until) {
    std::int64_t t = entry_time(e);
    if (f.since && t < *f.since) return false;
    if (f.until && t >= *f.until) return false;
  }
  return true;
}

namespace {

// Whether a request or response body of the exchange contains the text. Only
// the candidate's own gzip members are inflated.
bool bodies_contain(std::string_view segment_bytes, const IndexEntry& e, std::string_view text) {
  for (const auto& r : e.records) {
    if (r.type != "request" && r.type != "response") continue;
    if (r.offset > segment_bytes.size() || r.length > segment_bytes.size() - r.offset) continue;
    MemberScan one = scan_members(segment_bytes.substr(r.offset, r.length));
    if (one.members.empty()) continue;
    auto rec = parse_record(one.members[0].data, nullptr);
    if (rec && icontains(http_payload(rec->block), text)) return true;
  }
  return false;
}

}  // namespace

std::optional<SearchResult> search(const std::string& dir, const Filter& f, std::string* error) {
  auto files = segment_files(dir, error);
  if (!files) return std::nullopt;
  SearchResult out;
  for (const auto& file : *files) {
    std::string why;
    auto loaded = load_index(dir, file, &why);
    if (!loaded) {
      out.warnings.push_back(why);
      continue;
    }
    ++out.segments;
    if (!loaded->warning.empty()) out.warnings.push_back(loaded->warning);
    std::vector<const IndexEntry*> candidates;
    for (const auto& e : loaded->index.entries)
      if (index_matches(e, f)) candidates.push_back(&e);
    if (!f.text.empty() && !candidates.empty()) {
      auto mapped = MappedFile::open(dir + "/" + file, &why);
      if (!mapped) {
        out.warnings.push_back(why);
        continue;
      }
      std::erase_if(candidates, [&](const IndexEntry* e) { return !bodies_contain(mapped->bytes(), *e, f.text); });
    }
    for (const IndexEntry* e : candidates) out.hits.push_back({file, *e});
  }
  // WARC-Date is UTC with a fixed width: text order is time order.
  std::stable_sort(out.hits.begin(), out.hits.end(), [](const Hit& a, const Hit& b) {
    return a.entry.time != b.entry.time ? a.entry.time < b.entry.time : a.entry.id < b.entry.id;
  });
  return out;
}

std::optional<Hit> find_exchange(const std::string& dir, std::string_view id, std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = std::move(msg);
    return std::optional<Hit>();
  };
  std::string want(id);
  if (want.starts_with("<urn:uuid:")) want = want.substr(10);
  if (want.starts_with("urn:uuid:")) want = want.substr(9);
  if (want.ends_with('>')) want.pop_back();
  want = lowered(want);
  if (want.size() < 8) return fail("exchange id '" + std::string(id) + "': give at least 8 characters of the uuid");
  Filter all;
  auto result = search(dir, all, error);
  if (!result) return std::nullopt;
  std::optional<Hit> found;
  for (auto& h : result->hits) {
    std::string uuid = h.entry.id.starts_with("<urn:uuid:") ? h.entry.id.substr(10, 36) : h.entry.id;
    if (!uuid.starts_with(want)) continue;
    if (found) return fail("exchange id '" + std::string(id) + "' is ambiguous: " + found->entry.id + ", " + h.entry.id);
    found = std::move(h);
  }
  if (!found) return fail("no exchange " + std::string(id) + " in " + dir);
  return found;
}

std::optional<SealedManifest> SealedManifest::load(const std::string& dir, const std::string& segment, EVP_PKEY* key,
                                                   std::string* why) {
  FindingKind kind{};
  std::string reason;
  auto m = load_trusted_manifest(dir, segment, key, &kind, &reason);
  if (!m) {
    if (why) *why = segment + ": " + std::string(to_string(kind)) + ": " + reason;
    return std::nullopt;
  }
  SealedManifest out;
  out.manifest = std::move(*m);
  for (std::size_t i = 0; i < out.manifest.records.size(); ++i) out.by_id.emplace(out.manifest.records[i].id, i);
  return out;
}

const ManifestRecord* SealedManifest::find(const std::string& id) const {
  auto it = by_id.find(id);
  return it == by_id.end() ? nullptr : &manifest.records[it->second];
}

std::optional<ReadExchange> read_exchange(const std::string& dir, const Hit& hit, const SealedManifest* sealed,
                                          std::string* error) {
  auto mapped = MappedFile::open(dir + "/" + hit.file, error);
  if (!mapped) return std::nullopt;
  std::string_view bytes = mapped->bytes();
  ReadExchange out;
  out.checked = sealed != nullptr;
  for (const auto& where : hit.entry.records) {
    ReadRecord rr;
    rr.where = where;
    if (where.offset > bytes.size() || where.length > bytes.size() - where.offset) {
      if (error) *error = hit.file + ": record " + where.id + " lies beyond the end of the segment (stale index?)";
      return std::nullopt;
    }
    rr.compressed = std::string(bytes.substr(where.offset, where.length));
    MemberScan one = scan_members(rr.compressed);
    if (one.members.size() != 1 || !one.complete()) {
      if (error) *error = hit.file + " @" + std::to_string(where.offset) + ": not one gzip member (" + one.tail_error + ")";
      return std::nullopt;
    }
    rr.data = std::move(one.members[0].data);
    Member m{where.offset, where.length, rr.data};
    rr.info = inspect_record(m);
    std::string problem = rr.info.problem;
    if (problem.empty() && rr.info.id != where.id) problem = "another record than the index names (stale index?)";
    if (problem.empty() && sealed) {
      const ManifestRecord* want = sealed->find(rr.info.id);
      if (!want) problem = "not in the sealed manifest";
      else if (want->digest != rr.info.digest || want->chain != rr.info.chain || want->seq != rr.info.seq ||
               want->offset != where.offset)
        problem = "differs from the sealed record";
    }
    if (!problem.empty())
      out.integrity += (out.integrity.empty() ? "" : "; ") + ("record " + rr.info.id + ": " + problem);
    out.records.push_back(std::move(rr));
  }
  return out;
}

bool printable_text(std::string_view body) {
  std::size_t i = 0;
  while (i < body.size()) {
    auto c = static_cast<unsigned char>(body[i]);
    if (c < 0x80) {
      if ((c < 0x20 && c != '\t' && c != '\r' && c != '\n') || c == 0x7f) return false;
      ++i;
      continue;
    }
    std::size_t n = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (n == 0 || i + n > body.size()) return false;
    for (std::size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(body[i + k]) & 0xc0) != 0x80) return false;
    i += n;
  }
  return true;
}

}  // namespace sightline::archive
