// `lockstep data fetch` against a file:// mirror the test creates, and the CLI commands.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "data/cli.h"
#include "data/convert.h"
#include "data/fetch.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

TEST(Fetch, DownloadsVerifiesAndSkipsPresentFiles) {
  TempDir mirror, dst;
  testing::make_idx_dir(mirror.path(), 30, 10, true);
  FetchSpec spec = fetch_spec(SourceFormat::Mnist);
  for (RemoteFile& f : spec.files) f.md5 = md5_file(mirror.file(f.name));  // our generated files' sums
  std::ostringstream log;
  auto files = fetch(spec, dst.file("mnist"), "file://" + mirror.path(), &log);
  ASSERT_EQ(files.size(), 4u);
  for (const RemoteFile& f : spec.files) EXPECT_EQ(md5_file(dst.file("mnist/" + f.name)), f.md5);
  fetch(spec, dst.file("mnist"), "file://" + mirror.path() + "/", &log);
  EXPECT_NE(log.str().find("present"), std::string::npos) << log.str();
  std::ostringstream out, err;
  ASSERT_EQ(run_data_command({"convert", "--format", "mnist", "--src", dst.file("mnist"), "--out", dst.file("m.h5")},
                             out, err),
            0)
      << err.str();
}

TEST(Fetch, ChecksumMismatchAndMissingFilesFail) {
  TempDir mirror, dst;
  testing::make_idx_dir(mirror.path(), 5, 5, true);
  FetchSpec spec = fetch_spec(SourceFormat::FashionMnist);  // official sums: our generated files differ
  try {
    fetch(spec, dst.path(), "file://" + mirror.path(), nullptr);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("MD5 mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("8d4fb7e6c68d591d4c3dfef9ec88bf0d"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dst.file("train-images-idx3-ubyte.gz")));
  EXPECT_FALSE(fs::exists(dst.file("train-images-idx3-ubyte.gz.part")));
  std::ostringstream out, err;
  EXPECT_EQ(run_data_command({"fetch", "mnist", "--dir", dst.path(), "--mirror", "file://" + dst.file("nothing")}, out,
                             err),
            2);
  EXPECT_NE(err.str().find("download failed"), std::string::npos) << err.str();
}

TEST(Fetch, CifarTarballIsUnpackedAndConverts) {
  TempDir src, mirror, dst;
  fs::create_directories(src.file("cifar-10-batches-bin"));
  testing::make_cifar_dir(src.file("cifar-10-batches-bin"), 6, 5, 4);
  ASSERT_EQ(testing::shell("tar -C " + src.path() + " -czf " + mirror.file("cifar-10-binary.tar.gz") +
                           " cifar-10-batches-bin"),
            0);
  FetchSpec spec = fetch_spec(SourceFormat::Cifar10);
  spec.files[0].md5 = md5_file(mirror.file("cifar-10-binary.tar.gz"));
  setenv("LOCKSTEP_DATA_MIRROR", ("file://" + mirror.path()).c_str(), 1);
  fetch(spec, dst.path(), "", nullptr);
  unsetenv("LOCKSTEP_DATA_MIRROR");
  EXPECT_TRUE(fs::exists(dst.file("cifar-10-batches-bin/data_batch_5.bin")));
  std::ostringstream out, err;
  ASSERT_EQ(run_data_command({"convert", "--format", "cifar10", "--src", dst.file("cifar-10-batches-bin"), "--out",
                              dst.file("c.h5")},
                             out, err),
            0)
      << err.str();
  EXPECT_NE(out.str().find("train 30 x 32x32x3"), std::string::npos) << out.str();
}

TEST(Fetch, RealFashionMnistFromALocalMirror) {
  const std::string real = LOCKSTEP_SHARED_DATASETS "/fashion-mnist";
  if (!fs::exists(real)) GTEST_SKIP() << real << " is absent: the official-checksum fetch is tested on generated files only";
  TempDir dst;
  std::ostringstream log;
  fetch(fetch_spec(SourceFormat::FashionMnist), dst.path(), "file://" + real, &log);
  EXPECT_EQ(md5_file(dst.file("t10k-labels-idx1-ubyte.gz")), "bb300cfdad3c16e7a12a480ee83cd310");
}

TEST(Cli, HelpInspectAndBadFlags) {
  for (const char* cmd : {"convert", "fetch", "inspect"}) {
    std::ostringstream out, err;
    EXPECT_EQ(run_data_command({cmd, "--help"}, out, err), 0);
    EXPECT_NE(out.str().find("Example"), std::string::npos) << cmd;
  }
  std::ostringstream out, err;
  EXPECT_EQ(run_data_command({"convert", "--format", "mnist"}, out, err), 2);
  EXPECT_NE(err.str().find("required"), std::string::npos) << err.str();
  EXPECT_EQ(run_data_command({"frobnicate"}, out, err), 2);
  EXPECT_EQ(run_data_command({"convert", "--format", "emnist", "--src", ".", "--out", "x.h5"}, out, err), 2);

  TempDir d;
  testing::make_idx_dir(d.path(), 40, 10, true);
  std::ostringstream o2, e2;
  ASSERT_EQ(run_data_command({"convert", "--format", "fashion-mnist", "--src", d.path(), "--out", d.file("f.h5")}, o2,
                             e2),
            0)
      << e2.str();
  std::ostringstream o3, e3;
  ASSERT_EQ(run_data_command({"inspect", d.file("f.h5")}, o3, e3), 0) << e3.str();
  const std::string s = o3.str();
  EXPECT_NE(s.find("/train/x  uint8 [40, 28, 28, 1]"), std::string::npos) << s;
  EXPECT_NE(s.find("Ankle boot"), std::string::npos) << s;
  EXPECT_NE(s.find("first labels: 3 0 7 4 1 8 5 2 9 6"), std::string::npos) << s;
}

}  // namespace
}  // namespace lockstep::data
