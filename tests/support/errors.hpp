// Checking the library's error messages: std::invalid_argument whose text holds given parts.
#ifndef MOE_TESTS_SUPPORT_ERRORS_HPP
#define MOE_TESTS_SUPPORT_ERRORS_HPP

#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace moe::test {

/// Calls fn, which must throw std::invalid_argument whose message holds every part.
template <class F>
void require_invalid(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    INFO("message: " << what);
    for (const auto& part : parts) CHECK_THAT(what, Catch::Contains(part));
    return;
  }
  FAIL("no std::invalid_argument thrown; expected one holding \"" << parts.front() << "\"");
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_ERRORS_HPP
