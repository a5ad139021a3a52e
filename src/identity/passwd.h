// `sightline passwd FILE USER`: adds or replaces USER's line in a
// credentials file. The password comes from the terminal (twice, without
// echo) or, with --password-stdin or when stdin is not a terminal, as the
// first line of stdin (for scripts). The file is rewritten whole: a
// temporary file (mode 0600) beside it, fsync, rename.
#pragma once

#include "identity/credentials.h"

#include <string>

namespace sightline::identity {

// Replaces USER's line (any case of the name) or appends one; other lines,
// comments included, stay as they were. False with `why`.
bool set_password_line(const std::string& path, const std::string& user, const std::string& hash_text,
                       std::string& why);

// The whole command; returns the exit code (0 done, 2 usage or I/O error).
int passwd_command(const std::string& path, const std::string& user, bool password_stdin,
                   const std::string& scheme);

}  // namespace sightline::identity
