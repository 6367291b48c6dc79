// Typed reads of optional JSON fields: the fallback where a field is absent or null, the value
// where it has the type asked for, and an error naming the file, the field and what it holds
// where it has another.
#include <doctest/doctest.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "../support/check_error.hpp"
#include "blockdiff/io/json.hpp"

using namespace blockdiff;

TEST_CASE("optional_field: the fallback where absent or null, the value where typed, else an error naming it") {
  const auto j = nlohmann::json::parse(R"({"flag": true, "name": "bpe", "count": 7, "rate": 0.5, "whole": 2,
                                           "none": null, "fraction": 1.5, "big": 4294967296, "word": "yes"})");
  CHECK(io::optional_field(j, "flag", false, "t.json") == true);
  CHECK(io::optional_field<std::string>(j, "name", "", "t.json") == "bpe");
  CHECK(io::optional_field(j, "count", 0, "t.json") == 7);
  CHECK(io::optional_field(j, "rate", 0.0, "t.json") == 0.5);
  CHECK(io::optional_field(j, "whole", 0.0, "t.json") == 2.0);  // an integer is a number
  for (const char* key : {"absent", "none"}) {
    CAPTURE(key);
    CHECK(io::optional_field(j, key, true, "t.json") == true);
    CHECK(io::optional_field<std::string>(j, key, "fallback", "t.json") == "fallback");
    CHECK(io::optional_field(j, key, -3, "t.json") == -3);
    CHECK(io::optional_field(j, key, 0.25, "t.json") == 0.25);
  }
  CHECK_ERROR(io::optional_field(j, "fraction", 0, "t.json", "model."), "t.json: model.\"fraction\" must be an integer, not 1.5");
  CHECK_ERROR(io::optional_field(j, "word", false, "t.json"), "t.json: \"word\" must be a boolean, not \"yes\"");
  CHECK_ERROR(io::optional_field(j, "count", false, "t.json"), "\"count\" must be a boolean, not 7");
  CHECK_ERROR(io::optional_field<std::string>(j, "count", "", "t.json"), "\"count\" must be a string, not 7");
  CHECK_ERROR(io::optional_field(j, "word", 0.0, "t.json"), "\"word\" must be a number, not \"yes\"");
  CHECK_ERROR(io::optional_field(j, "flag", 0, "t.json"), "\"flag\" must be an integer, not true");
}

TEST_CASE("holds_integer_in: an integer within [lo, hi], bounds included, read as 64 bits") {
  const auto j = nlohmann::json::parse(R"([0, 5, -1, 6, 5.0, "5", 4294967301, -4294967291])");
  CHECK(io::holds_integer_in(j[0], 0, 5));
  CHECK(io::holds_integer_in(j[1], 0, 5));
  CHECK_FALSE(io::holds_integer_in(j[2], 0, 5));
  CHECK_FALSE(io::holds_integer_in(j[3], 0, 5));
  CHECK_FALSE(io::holds_integer_in(j[4], 0, 5));  // a number, not an integer
  CHECK_FALSE(io::holds_integer_in(j[5], 0, 5));
  CHECK_FALSE(io::holds_integer_in(j[6], 0, 5));  // 2^32 + 5: would be 5 as 32 bits
  CHECK_FALSE(io::holds_integer_in(j[7], -10, 10));  // −2^32 + 5 likewise
  CHECK(io::holds_integer_in(j[6], 0, INT64_MAX));
  // Past 2^63 an integer is held unsigned: 2^64 − 1 is not −1, nor 2^63 the lowest int64.
  const auto big = nlohmann::json::parse(R"([18446744073709551615, 9223372036854775808, 9223372036854775807])");
  CHECK_FALSE(io::holds_integer_in(big[0], -1, 10));
  CHECK_FALSE(io::holds_integer_in(big[1], INT64_MIN, 0));
  CHECK_FALSE(io::holds_integer_in(big[1], 0, INT64_MAX));
  CHECK(io::holds_integer_in(big[2], 0, INT64_MAX));
  CHECK(io::holds_integer_in(j[1], -10, 5));  // unsigned 5 against a negative lower bound
  CHECK_FALSE(io::holds_integer_in(j[1], 6, 10));
  CHECK(io::holds_integer_in(j[1], 5, 10));  // the bounds are in the range, signed or not
  CHECK(io::holds_integer_in(j[2], -1, 5));
  CHECK_FALSE(io::holds_integer_in(j[2], 0, 5));
}
