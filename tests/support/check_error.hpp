// CHECK_ERROR(expr, "part of the message"): expr throws blockdiff::Error whose message contains
// the given text (so a test checks that bad input is named, not just that something threw).
#pragma once

#include <doctest/doctest.h>

#include <string>

#include "blockdiff/core/error.hpp"

#define CHECK_ERROR(expr, needle)                                                                   \
  do {                                                                                              \
    bool blockdiff_thrown_ = false;                                                                 \
    try {                                                                                           \
      (void)(expr);                                                                                 \
    } catch (const ::blockdiff::Error& blockdiff_e_) {                                              \
      blockdiff_thrown_ = true;                                                                     \
      const std::string blockdiff_msg_ = blockdiff_e_.what();                                       \
      INFO("message: ", blockdiff_msg_);                                                            \
      CHECK_MESSAGE(blockdiff_msg_.find(needle) != std::string::npos, "expected the message to contain: " << needle); \
    }                                                                                               \
    CHECK_MESSAGE(blockdiff_thrown_, "expected blockdiff::Error from: " #expr);                    \
  } while (0)
