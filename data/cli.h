// `lockstep data convert|fetch|inspect`: the data subcommands of the lockstep CLI.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace lockstep::data {

// args: everything after `lockstep data`, e.g. {"convert", "--format", "mnist", "--src", "d", "--out", "m.h5"}.
// Returns the exit status: 0 ok, 2 for bad input (DataError/ConfigError/bad flags; message on `err`),
// 1 for anything else.
int run_data_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int run_data_command(const std::vector<std::string>& args);  // std::cout / std::cerr

}  // namespace lockstep::data
