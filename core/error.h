// Errors: one macro family, always on, throwing typed exceptions whose messages say what failed,
// where, and with which values. The `lockstep` command maps UserError (bad files, keys, values)
// to exit status 2 and every other Error to 1.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace lockstep {

// Base of every lockstep exception.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Something the user gave us is wrong (a run file, a data file, a checkpoint, a flag): exit 2.
class UserError : public Error {
 public:
  explicit UserError(const std::string& what) : Error(what) {}
};
class ConfigError : public UserError {
 public:
  explicit ConfigError(const std::string& what) : UserError(what) {}
};
class DataError : public UserError {
 public:
  explicit DataError(const std::string& what) : UserError(what) {}
};
class CheckpointError : public UserError {
 public:
  explicit CheckpointError(const std::string& what) : UserError(what) {}
};
// A collective failed or timed out, or ranks disagree.
class CommError : public Error {
 public:
  explicit CommError(const std::string& what) : Error(what) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Concatenate any streamable values into a string.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

// The rank shown in error messages; set once by the communicator at start-up.
int error_rank();
void set_error_rank(int rank);

[[noreturn]] void throw_internal(const char* file, int line, const char* cond, const std::string& msg);

}  // namespace lockstep

// LS_CHECK(cond, ...): an internal invariant (a bug if it fails); message pieces are streamed.
#define LS_CHECK(cond, ...)                                                                 \
  do {                                                                                      \
    if (!(cond)) ::lockstep::throw_internal(__FILE__, __LINE__, #cond,                      \
                                            ::lockstep::str_cat(__VA_ARGS__));              \
  } while (0)

// LS_REQUIRE(cond, ExceptionType, ...): a check on user input, thrown as the given type.
#define LS_REQUIRE(cond, Type, ...)                                                         \
  do {                                                                                      \
    if (!(cond)) throw Type(::lockstep::str_cat(__VA_ARGS__));                              \
  } while (0)
