// main() of the stand-alone GPU check (see run.sh): runs every registered test, prints a summary and
// exits non-zero if any failed.
#include <gtest/gtest.h>

#include <exception>
#include <memory>

int main() {
  int passed = 0, failed = 0, skipped = 0;
  for (const auto& e : mg::registry()) {
    mg::state() = mg::State{};
    std::printf("[ RUN      ] %s\n", e.name.c_str());
    std::fflush(stdout);
    std::unique_ptr<testing::Test> t(e.make());
    try {
      t->SetUp();
      if (!mg::state().skipped && !mg::state().failed) t->TestBody();
      t->TearDown();
    } catch (const std::exception& ex) {
      std::printf("uncaught exception: %s\n", ex.what());
      mg::state().failed = true;
    } catch (...) {
      std::printf("uncaught exception\n");
      mg::state().failed = true;
    }
    const char* tag = mg::state().failed ? "[  FAILED  ]" : mg::state().skipped ? "[  SKIPPED ]" : "[       OK ]";
    std::printf("%s %s\n", tag, e.name.c_str());
    (mg::state().failed ? failed : mg::state().skipped ? skipped : passed)++;
  }
  std::printf("\n%d passed, %d failed, %d skipped (of %zu)\n", passed, failed, skipped, mg::registry().size());
  return failed ? 1 : 0;
}
