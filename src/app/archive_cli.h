// `sightline archive search|show|export|prune|hold`: retrieval and retention
// on an archive directory (docs/archive.md). Kept out of main.cc so that the
// command line there stays a list of subcommands.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>

namespace sightline::app {

class ArchiveRetrievalCli {
 public:
  // Adds the subcommands to `archive` (the `sightline archive` subcommand).
  explicit ArchiveRetrievalCli(CLI::App* archive);
  ~ArchiveRetrievalCli();
  // The exit code when one of these subcommands was given: 0 done / found,
  // 1 nothing found or an integrity problem, 2 usage or I/O errors.
  std::optional<int> run() const;

  struct Flags;  // public so the implementation's helpers can take it

 private:
  std::unique_ptr<Flags> f_;
};

}  // namespace sightline::app
