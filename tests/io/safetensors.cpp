// safetensors: bit-exact round trips, files written by hand in the test, and every kind of bad
// file named in the error; files replaced whole.
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../support/check_error.hpp"
#include "../support/paths.hpp"
#include "blockdiff/core/rng.hpp"
#include "blockdiff/io/file.hpp"
#include "blockdiff/io/safetensors.hpp"

using namespace blockdiff;
using blockdiff::io::SafetensorsFile;
using blockdiff::io::SafetensorsWriter;

namespace {
// The format by hand: 8-byte little-endian header length, the JSON header, then the data.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}
template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
}  // namespace

TEST_CASE("a file written by hand reads correctly, for every dtype") {
  const auto dir = test::temp_dir("st-hand");
  const std::vector<float> f32{1.5f, -2.0f, 3.25f};
  const std::vector<std::uint16_t> bf{0x3f80, 0xc000};  // 1, -2 in bf16
  const std::vector<std::uint16_t> h{0x3c00, 0x4200};   // 1, 3 in f16
  const std::vector<std::int32_t> i32{-7, 9};
  const std::vector<std::int64_t> i64{1ll << 40};
  const std::vector<std::uint8_t> u8{1, 2, 3, 4};
  std::string data = raw(f32) + raw(bf) + raw(h) + raw(i32) + raw(i64) + raw(u8);
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"BF16","shape":[2,1],"data_offsets":[12,16]},)"
      R"("c":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},)"
      R"("d":{"dtype":"I32","shape":[2],"data_offsets":[20,28]},)"
      R"("e":{"dtype":"I64","shape":[],"data_offsets":[28,36]},)"
      R"("f":{"dtype":"U8","shape":[2,2],"data_offsets":[36,40]}})";
  test::write_text(dir / "x.safetensors", make_file(header, data));
  SafetensorsFile f(dir / "x.safetensors");
  CHECK(f.entries().size() == 6);
  CHECK(f.metadata().at("format") == "pt");
  auto floats = [](const io::TensorEntry& e) {
    std::vector<float> out(static_cast<std::size_t>(e.numel()));
    convert_to_f32(e.dtype, e.bytes.data(), out.data(), out.size());
    return out;
  };
  CHECK(floats(f.at("a")) == f32);
  CHECK(floats(f.at("b")) == std::vector<float>{1.0f, -2.0f});
  CHECK(f.at("b").shape == std::vector<std::int64_t>{2, 1});
  CHECK(floats(f.at("c")) == std::vector<float>{1.0f, 3.0f});
  std::int32_t d[2];
  std::memcpy(d, f.at("d").bytes.data(), 8);
  CHECK(d[0] == -7);
  CHECK(d[1] == 9);
  std::int64_t e;
  std::memcpy(&e, f.at("e").bytes.data(), 8);
  CHECK(e == (1ll << 40));
  CHECK(f.at("e").shape.empty());
  CHECK(f.at("f").dtype == DType::u8);
  CHECK(static_cast<int>(f.at("f").bytes[3]) == 4);
}

TEST_CASE("tensors with no elements read, wherever their empty range lies") {
  // The format allows a zero dimension: data_offsets [x, x], at any x of the data section,
  // inside another tensor's range or at the very end; nothing overlaps an empty range.
  const auto dir = test::temp_dir("st-empty");
  const std::vector<float> f32{1.5f, -2.0f};
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("at_a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
      R"("in_a":{"dtype":"BF16","shape":[3,0],"data_offsets":[4,4]},)"
      R"("end":{"dtype":"I64","shape":[0,5],"data_offsets":[8,8]}})";
  test::write_text(dir / "e.safetensors", make_file(header, raw(f32)));
  SafetensorsFile f(dir / "e.safetensors");
  REQUIRE(f.entries().size() == 4);
  CHECK(f.at("at_a").numel() == 0);
  CHECK(f.at("at_a").bytes.empty());
  CHECK(f.at("in_a").shape == std::vector<std::int64_t>{3, 0});
  CHECK(f.at("end").shape == std::vector<std::int64_t>{0, 5});
  CHECK(f.at("end").bytes.empty());
  CHECK(std::memcmp(f.at("a").bytes.data(), f32.data(), 8) == 0);
}

TEST_CASE("a file written by blockdiff reads back bit-exactly, for every dtype") {
  const auto dir = test::temp_dir("st-roundtrip");
  Rng rng(3);
  std::vector<float> values(1000);
  for (auto& v : values) v = static_cast<float>(rng.normal() * 100);
  std::vector<std::int64_t> ints{1, -2, 3};
  SafetensorsWriter w;
  w.add<float>("f32", {10, 100}, values);
  w.add_converted("bf16", DType::bf16, {1000}, values);
  w.add_converted("f16", DType::f16, {1000}, values);
  w.add<std::int64_t>("i64", {3}, ints);
  w.set_metadata("note", "hello");
  w.write(dir / "y.safetensors");
  SafetensorsFile f(dir / "y.safetensors");
  CHECK(std::memcmp(f.at("f32").bytes.data(), values.data(), 4000) == 0);
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::uint16_t b, h;
    std::memcpy(&b, f.at("bf16").bytes.data() + 2 * i, 2);
    std::memcpy(&h, f.at("f16").bytes.data() + 2 * i, 2);
    REQUIRE(b == to_bf16(values[i]).bits);
    REQUIRE(h == to_f16(values[i]).bits);
  }
  CHECK(std::memcmp(f.at("i64").bytes.data(), ints.data(), 24) == 0);
  CHECK(f.metadata().at("note") == "hello");
  CHECK(!std::filesystem::exists(dir / "y.safetensors.tmp"));
}

TEST_CASE("bad safetensors files are errors that name the file and the entry") {
  const auto dir = test::temp_dir("st-bad");
  const auto p = dir / "bad.safetensors";
  auto open = [&](const std::string& bytes) {
    test::write_text(p, bytes);
    return SafetensorsFile(p);
  };
  const std::string four(4, 'x');
  CHECK_ERROR(open("abc"), "truncated");
  CHECK_ERROR(open(make_file("{}", "").substr(0, 8) + std::string(1, '{')), "larger than the file");
  {
    std::string huge(8, '\0');
    huge[7] = 0x7f;  // an absurd header length
    CHECK_ERROR(open(huge), "exceeds");
  }
  CHECK_ERROR(open(make_file("{not json", "")), "not valid JSON");
  CHECK_ERROR(open(make_file("[1,2]", "")), "not a JSON object");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four)), "run past the data section");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,0]}})", four + four)), "begin after end");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", four + four)), "needs 12");
  // More bytes than the dtype and shape need is as wrong as fewer.
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", four + four)), "needs 4");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", four)), "unknown or unsupported dtype \"Q4\"");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four)), "non-negative");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[1]}})", four)), "data_offsets");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("v":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                             four + four)),
              "overlap");
  CHECK_ERROR(open(make_file(R"({"__metadata__":{"a":1}})", "")), "__metadata__");
  CHECK_ERROR(SafetensorsFile(dir / "missing.safetensors"), "cannot open");
  CHECK_ERROR(open(make_file(R"({"__metadata__":[1]})", "")), "bad.safetensors: __metadata__ is not an object");
  CHECK_ERROR(open(make_file(R"({"w":[1]})", "")), "tensor \"w\": entry is not an object");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", four)),
              "tensor \"w\": missing string field \"dtype\"");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":1,"data_offsets":[0,4]}})", four)),
              "tensor \"w\": missing array field \"shape\"");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4]}})", four)),
              "shape 1099511627776 is too large");  // 2^40
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[1048576,1048576,1048576],"data_offsets":[0,4]}})", four)),
              "is too large");  // 2^60 elements, each dimension below 2^40
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", four)),
              "tensor \"w\": data_offsets must be non-negative integers");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", four)),
              "data_offsets must be non-negative integers");
  CHECK_ERROR(open(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four)).at("v"),
              "bad.safetensors: no tensor named \"v\"");
  // The writer refuses inconsistent input before anything touches the disk.
  SafetensorsWriter w;
  std::vector<float> v(3);
  CHECK_ERROR(w.add<float>("t", {2, 2}, v), "tensor \"t\"");
  w.add<float>("t", {3}, v);
  CHECK_ERROR(w.add<float>("t", {3}, v), "SafetensorsWriter: tensor \"t\" added twice");
  CHECK_ERROR(w.add_converted("u", DType::i32, {3}, v), "SafetensorsWriter: cannot store floats as I32");
}

TEST_CASE("replace_file: a reader finds the old file or the new one, and a failed write keeps the old") {
  const auto dir = test::temp_dir("replace-file");
  const auto path = dir / "f.txt";
  const auto read = [&] {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  io::replace_file(path, [](std::ofstream& out) { out << "old"; });
  CHECK(read() == "old");
  CHECK_ERROR(io::replace_file(path,
                               [](std::ofstream& out) {
                                 out << "half of the new";
                                 out.setstate(std::ios::badbit);  // as a full disk would
                               }),
              "f.txt: write failed (the file there, if any, is unchanged)");
  CHECK(read() == "old");
  CHECK_FALSE(std::filesystem::exists(dir / "f.txt.tmp"));
  io::replace_file(path, [](std::ofstream& out) { out << "new"; });
  CHECK(read() == "new");
  CHECK_ERROR(io::replace_file(dir / "no such folder" / "f.txt", [](std::ofstream&) {}), "cannot open for writing");
}

TEST_CASE("test::TempDir: a fresh folder, removed with what it holds at the end of its scope") {
  std::filesystem::path where;
  {
    const auto dir = test::temp_dir("temp-dir");
    where = dir.path();
    CHECK(std::filesystem::is_empty(where));
    std::filesystem::create_directories(dir / "a" / "b");
    test::write_text(dir / "a" / "b" / "c.txt", "kept until the scope ends");
    const std::filesystem::path& as_path = dir;  // reads as its path
    CHECK(std::filesystem::exists(as_path / "a" / "b" / "c.txt"));
  }
  if (std::getenv("BLOCKDIFF_KEEP_TEST_FILES") == nullptr) CHECK_FALSE(std::filesystem::exists(where));
}
