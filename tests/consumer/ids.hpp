// The consumer programs' argument parsing: a comma-separated list of token ids.
#pragma once

#include <sstream>
#include <string>
#include <vector>

//! "1,2,3" as {1, 2, 3}.
inline std::vector<int> ids(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  for (std::string id; std::getline(in, id, ',');) out.push_back(std::stoi(id));
  return out;
}
