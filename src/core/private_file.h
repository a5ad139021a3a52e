// Secrets (CA key, archive signing key, S3 credentials) must be readable by
// their owner only: a key file others can read is refused at startup rather
// than trusted (issue 11).
#pragma once

#include <string>
#include <string_view>

namespace sightline::core {

// False with the reason in `why` when `path` cannot be examined or its mode
// gives group or others any access. `what` names it ("CA key").
bool check_private_file(const std::string& path, std::string_view what, std::string& why);

}  // namespace sightline::core
