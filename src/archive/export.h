// `sightline archive export`: copies the records of matching exchanges, gzip
// member by member (byte-exact, so every digest and chain value still matches
// the original), into a new .warc.gz with its own signed export manifest.
#pragma once

#include "archive/index.h"

#include <nlohmann/json.hpp>

namespace sightline::archive {

inline constexpr std::string_view kExportFormat = "sightline-archive-export/1";

// A record of the export: where it is in the export file, and what it was in
// its source segment (seq, digest and chain are the original values).
struct ExportRecord {
  ManifestRecord record;   // offset/length: in the export file
  std::string source;      // source segment; empty for the export's own warcinfo
  Digest chain_prev{};     // the source chain value before this record
};

struct ExportSource {
  std::string segment;
  std::string manifest_sha256;  // hex SHA-256 of its signed manifest's bytes
  std::string chain_start, chain_head, sealed;
};

struct ExportManifest {
  std::string file;  // the export's file name
  std::string file_sha256;
  std::uint64_t file_size = 0;
  std::string created;
  std::string source_dir;
  nlohmann::ordered_json filter = nlohmann::ordered_json::object();
  std::string key_fingerprint;
  std::uint64_t exchanges = 0;
  std::vector<ExportSource> sources;
  std::vector<ExportRecord> records;
};

std::string export_manifest_json(const ExportManifest& m);  // the signed bytes
std::optional<ExportManifest> parse_export_manifest(std::string_view text, std::string* why);

struct ExportOptions {
  std::string dir;
  std::string out;  // FILE.warc.gz; never overwritten
  Filter filter;
  nlohmann::ordered_json filter_json = nlohmann::ordered_json::object();  // as recorded in the manifest
  EVP_PKEY* signing_key = nullptr;  // the archive's private key
  WallClock::time_point now = WallClock::now();
};

struct ExportResult {
  std::uint64_t exchanges = 0;
  std::uint64_t records = 0;
  std::vector<std::string> sources;
  std::uint64_t skipped_open = 0;  // matches in open segments: not sealed, not exported
};

// Refuses (error) when a matching record does not match its segment's signed
// manifest: an export vouches only for intact records.
std::optional<ExportResult> export_archive(const ExportOptions& opts, std::string* error);

}  // namespace sightline::archive
