/*
 * The LLM chat in a Qualtrics question. Paste this whole file into the question's JavaScript
 * (the question's "JavaScript" / "Add JavaScript" editor), replacing what is there, and edit the
 * one line below. docs/surveys.md walks through the survey flow it expects.
 *
 * It hides Next, opens the chat in the question, writes the embedded data fields
 *   chat_id        the chat's id (joins the service's export)
 *   chat_messages  how many messages the participant sent (the service stored)
 *   chat_done      "1" once the study's minimum is met, "0" before
 *   chat_error     why the chat could not open (study_full, paused, ...), if it could not
 * and shows Next once chat_done is 1. Declare these fields in the survey flow's Set Embedded Data
 * element (before this block), or Qualtrics does not save them.
 *
 * Entry: when the survey flow's Web Service element saved chat_url, chat_token and chat_ticket
 * (server entry), they open the chat; otherwise the page enters the study itself (link entry)
 * with chat_entry (the EntryUrl) and chat_study (the study's id) from a Set Embedded Data
 * element, as participant PROLIFIC_PID (from Prolific's link), or else the ResponseID.
 */
Qualtrics.SurveyEngine.addOnload(function () {
  // Where you copied client_js/ (an https folder served with CORS headers): the line to edit.
  var CHAT_JS = "https://YOUR-STATIC-HOST/client_js/";

  var data = {  // Qualtrics replaces each ${e://Field/...} with the embedded data's value ("" if unset)
    url: "${e://Field/chat_url}",
    token: "${e://Field/chat_token}",
    ticket: "${e://Field/chat_ticket}",
    minMessages: "${e://Field/chat_min_messages}",
    entry: "${e://Field/chat_entry}",
    study: "${e://Field/chat_study}",
    ids: {
      PROLIFIC_PID: "${e://Field/PROLIFIC_PID}",
      STUDY_ID: "${e://Field/STUDY_ID}",
      SESSION_ID: "${e://Field/SESSION_ID}",
      ResponseID: "${e://Field/ResponseID}"
    }
  };
  var question = this;
  var save = function (name, value) { Qualtrics.SurveyEngine.setEmbeddedData(name, String(value)); };
  question.hideNextButton();
  var box = document.createElement("div");
  question.getQuestionContainer().appendChild(box);

  var options = {
    onProgress: function (progress) {
      save("chat_id", progress.chatId);
      save("chat_messages", progress.messages);
      save("chat_done", progress.done ? 1 : 0);
      if (progress.done) question.showNextButton();
    },
    onRefused: function (code) { save("chat_error", code); }
  };
  if (data.token) {  // server entry: the Web Service element entered
    options.credentials = { url: data.url, token: data.token, ticket: data.ticket };
    options.minMessages = Number(data.minMessages) || 1;
  } else {  // link entry
    var ids = {};
    for (var name in data.ids) if (data.ids[name]) ids[name] = data.ids[name];
    options.entry = { url: data.entry, study: data.study, participant: ids.PROLIFIC_PID || ids.ResponseID || "", ids: ids };
  }

  var mounted = null;
  Qualtrics.SurveyEngine.addOnUnload(function () { if (mounted) mounted.destroy(); });
  import(CHAT_JS + "survey.js").then(function (survey) {
    mounted = survey.mountSurveyChat(box, options);
  }, function () {
    box.textContent = "The chat could not be loaded. Please reload the page; if this happens again, contact the researchers.";
    save("chat_error", "script_failed");
  });
});
